//! What every IPython kernel runs once, silently, before any user code: `kernel_startup.py`,
//! which adds the `e2b/chart` display format (the data behind a matplotlib figure, as E2B's
//! code interpreter sends it).

/// The kernel-side code, embedded in the binary (a template need not carry it).
const KERNEL_STARTUP: &str = include_str!("kernel_startup.py");

/// The startup code as one silent execution. It runs in a namespace of its own, so the
/// user's namespace gains no names from it.
pub fn ipython_code() -> String {
    let source = serde_json::to_string(KERNEL_STARTUP).expect("a string serializes");
    format!(
        "exec(compile({source}, '<cove kernel startup>', 'exec'), {{'__name__': '_cove_kernel_startup'}})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON string is a Python string literal of the same text: Python reads it back.
    #[test]
    fn the_startup_code_is_one_valid_python_statement() {
        let code = ipython_code();
        assert!(!code.contains('\n'));
        let python = std::path::Path::new("/usr/bin/python3");
        if !python.exists() {
            return;
        }
        let check = format!(
            "import ast, json\ntree = ast.parse({})\nassert len(tree.body) == 1\n\
             source = tree.body[0].value.args[0].args[0].value\n\
             assert source == open({}).read()\nast.parse(source)",
            serde_json::to_string(&code).unwrap(),
            serde_json::to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/interpreter/kernel_startup.py"
            ))
            .unwrap(),
        );
        let status = std::process::Command::new(python)
            .args(["-c", &check])
            .status()
            .unwrap();
        assert!(status.success());
    }
}
