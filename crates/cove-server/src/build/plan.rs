//! A build request checked into a plan: where the build starts (an image, or a template) and
//! its steps, each understood. Everything a client can get wrong is found here, before the
//! build starts, and answered with a 400 that names the step.

use cove_proto::templates::{BuildStart, RegistryAuth, Step};

use super::copy::Copy;

/// Where a build starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// An image from a registry, with the credentials the request gave.
    Image {
        reference: cove_image::Reference,
        credentials: cove_image::Credentials,
    },
    /// Another template of the team (its default build, or `name:tag`).
    Template(String),
}

/// What one step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A shell command, as a user (the current one when `None`).
    Run {
        command: String,
        user: Option<String>,
    },
    /// Uploaded files into the template.
    Copy { copy: Copy, files_hash: String },
    /// Variables for later steps and the template's sandboxes.
    Env(Vec<(String, String)>),
    /// The directory later steps and the template's processes start in.
    Workdir(String),
    /// The user later steps and the template's processes run as.
    User(String),
}

/// One step, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    /// Its number as E2B's clients count them (the first step is `1`; `base` is 0).
    pub number: usize,
    pub kind: StepKind,
    /// Rebuild it (and what follows) whatever the cache holds.
    pub force: bool,
    /// As the client sent it (for the cache key).
    pub raw: Step,
}

impl PlannedStep {
    /// The step as the log and errors show it: `step 3 (RUN pip install x)`.
    pub fn describe(&self) -> String {
        format!("step {} ({})", self.number, self.summary())
    }

    /// `RUN pip install x`, shortened.
    pub fn summary(&self) -> String {
        let text = match &self.kind {
            StepKind::Run { command, .. } => format!("RUN {command}"),
            StepKind::Copy { copy, .. } => format!("COPY {} {}", copy.src, copy.dest),
            StepKind::Env(pairs) => format!(
                "ENV {}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            StepKind::Workdir(path) => format!("WORKDIR {path}"),
            StepKind::User(user) => format!("USER {user}"),
        };
        shorten(&text, 120)
    }
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// A checked build request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: Base,
    pub steps: Vec<PlannedStep>,
    /// Rebuild everything whatever the cache holds.
    pub force: bool,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

/// The most steps one build may have.
const MAX_STEPS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("give either fromImage or fromTemplate, not both")]
    BothBases,
    #[error("give fromImage (an image such as python:3.12) or fromTemplate (a template name)")]
    NoBase,
    #[error("invalid fromImage {image:?}: {reason}")]
    Image { image: String, reason: String },
    #[error(
        "fromImageRegistry of type \"aws\" (ECR access keys) is not supported by Cove: give an ECR \
         token instead as type \"registry\" (username \"AWS\", password from `aws ecr get-login-password`)"
    )]
    Aws,
    #[error("fromImageRegistry is given, but fromImage is not")]
    RegistryWithoutImage,
    #[error("a build has at most {MAX_STEPS} steps, got {0}")]
    TooMany(usize),
    #[error("step {number} ({kind}): {reason}")]
    Step {
        number: usize,
        kind: String,
        reason: String,
    },
    #[error("the start command is empty")]
    EmptyStartCmd,
}

impl Plan {
    /// Checks `request`.
    pub fn new(request: &BuildStart) -> Result<Self, PlanError> {
        let base = match (&request.from_image, &request.from_template) {
            (Some(_), Some(_)) => return Err(PlanError::BothBases),
            (None, None) => return Err(PlanError::NoBase),
            (Some(image), None) => {
                let reference =
                    cove_image::Reference::parse(image.trim()).map_err(|err| PlanError::Image {
                        image: image.clone(),
                        reason: err.to_string(),
                    })?;
                let credentials = match &request.from_image_registry {
                    None => cove_image::Credentials::Anonymous,
                    Some(RegistryAuth::Registry { username, password }) => {
                        cove_image::Credentials::basic(username, password)
                    }
                    Some(RegistryAuth::Gcp {
                        service_account_json,
                    }) => cove_image::Credentials::gcp_service_account(service_account_json),
                    Some(RegistryAuth::Aws { .. }) => return Err(PlanError::Aws),
                };
                Base::Image {
                    reference,
                    credentials,
                }
            }
            (None, Some(template)) => {
                if request.from_image_registry.is_some() {
                    return Err(PlanError::RegistryWithoutImage);
                }
                Base::Template(template.trim().to_owned())
            }
        };
        if request.steps.len() > MAX_STEPS {
            return Err(PlanError::TooMany(request.steps.len()));
        }
        let steps = request
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| plan_step(i + 1, step))
            .collect::<Result<Vec<_>, _>>()?;
        if request
            .start_cmd
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(PlanError::EmptyStartCmd);
        }
        Ok(Self {
            base,
            steps,
            force: request.force,
            start_cmd: request.start_cmd.clone().filter(|c| !c.trim().is_empty()),
            ready_cmd: request.ready_cmd.clone().filter(|c| !c.trim().is_empty()),
        })
    }

    /// The files hashes the COPY steps need, with their steps.
    pub fn files(&self) -> impl Iterator<Item = (&PlannedStep, &str)> {
        self.steps.iter().filter_map(|step| match &step.kind {
            StepKind::Copy { files_hash, .. } => Some((step, files_hash.as_str())),
            _ => None,
        })
    }
}

fn plan_step(number: usize, step: &Step) -> Result<PlannedStep, PlanError> {
    let kind_name = step.kind.to_ascii_uppercase();
    let bad = |reason: String| PlanError::Step {
        number,
        kind: kind_name.clone(),
        reason,
    };
    let args = &step.args;
    let kind = match kind_name.as_str() {
        "RUN" => {
            let command = args
                .first()
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| bad("the command is missing (args: [command, user?])".into()))?;
            if args.len() > 2 {
                return Err(bad(format!(
                    "takes a command and an optional user, got {} arguments",
                    args.len()
                )));
            }
            StepKind::Run {
                command: command.clone(),
                user: args.get(1).filter(|u| !u.is_empty()).cloned(),
            }
        }
        "COPY" => {
            let (Some(src), Some(dest)) = (args.first(), args.get(1)) else {
                return Err(bad(
                    "needs a source and a destination (args: [src, dest, user?, mode?])".into(),
                ));
            };
            if src.is_empty() || dest.is_empty() {
                return Err(bad(
                    "the source and the destination must not be empty".into()
                ));
            }
            if args.len() > 4 {
                return Err(bad(format!(
                    "takes at most 4 arguments (src, dest, user, mode), got {}",
                    args.len()
                )));
            }
            let files_hash = step
                .files_hash
                .clone()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    bad("filesHash is missing: upload the files first and name their hash".into())
                })?;
            if !valid_files_hash(&files_hash) {
                return Err(bad(format!(
                    "invalid filesHash {files_hash:?}: expected 64 hexadecimal characters"
                )));
            }
            let mode = args.get(3).cloned().unwrap_or_default();
            if !mode.is_empty()
                && u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .is_none()
            {
                return Err(bad(format!(
                    "invalid mode {mode:?}: give it in octal, like 0755"
                )));
            }
            StepKind::Copy {
                copy: Copy {
                    src: src.clone(),
                    dest: dest.clone(),
                    owner: args.get(2).cloned().unwrap_or_default(),
                    mode,
                },
                files_hash,
            }
        }
        "ENV" => {
            if args.is_empty() || !args.len().is_multiple_of(2) {
                return Err(bad(
                    "takes pairs of arguments (args: [name, value, name, value, …])".into(),
                ));
            }
            let pairs: Vec<(String, String)> = args
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            if let Some((name, _)) = pairs
                .iter()
                .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
            {
                return Err(bad(format!("invalid variable name {name:?}")));
            }
            StepKind::Env(pairs)
        }
        "WORKDIR" => match args.as_slice() {
            [path] if !path.trim().is_empty() => StepKind::Workdir(path.clone()),
            _ => return Err(bad("takes one path (args: [path])".into())),
        },
        "USER" => match args.as_slice() {
            [user] if !user.trim().is_empty() && !user.contains(['\0', '\n']) => {
                StepKind::User(user.clone())
            }
            _ => return Err(bad("takes one user name (args: [user])".into())),
        },
        other => {
            return Err(PlanError::Step {
                number,
                kind: other.to_owned(),
                reason: "unknown step type: use RUN, COPY, ENV, WORKDIR or USER".into(),
            });
        }
    };
    Ok(PlannedStep {
        number,
        kind,
        force: step.force,
        raw: step.clone(),
    })
}

/// A files hash as the SDKs compute it: a sha256 in hex. It names a file on the server, so
/// nothing else is accepted.
pub fn valid_files_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(steps: serde_json::Value) -> BuildStart {
        serde_json::from_value(serde_json::json!({"fromImage": "python:3.12", "steps": steps}))
            .unwrap()
    }

    #[test]
    fn the_sdks_steps_are_understood() {
        let hash = "a".repeat(64);
        let plan = Plan::new(&request(serde_json::json!([
            {"type": "USER", "args": ["root"]},
            {"type": "ENV", "args": ["A", "1", "B", "x y"]},
            {"type": "COPY", "args": ["app", "/app/", "user:user", "0755"], "filesHash": hash},
            {"type": "RUN", "args": ["pip install numpy", "root"], "force": true},
            {"type": "WORKDIR", "args": ["/app"]},
        ])))
        .unwrap();
        assert_eq!(plan.steps.len(), 5);
        assert_eq!(
            plan.steps[1].kind,
            StepKind::Env(vec![("A".into(), "1".into()), ("B".into(), "x y".into())])
        );
        assert_eq!(plan.steps[3].describe(), "step 4 (RUN pip install numpy)");
        assert!(plan.steps[3].force);
        assert_eq!(plan.files().count(), 1);
    }

    #[test]
    fn bad_requests_name_their_step() {
        let cases = [
            (
                serde_json::json!([{"type": "RUN", "args": []}]),
                "step 1 (RUN)",
            ),
            (
                serde_json::json!([{"type": "ENV", "args": ["A"]}]),
                "takes pairs",
            ),
            (
                serde_json::json!([{"type": "USER", "args": ["root"]}, {"type": "COPY", "args": ["a", "/b"]}]),
                "step 2 (COPY): filesHash is missing",
            ),
            (
                serde_json::json!([{"type": "COPY", "args": ["a", "/b"], "filesHash": "../../etc"}]),
                "invalid filesHash",
            ),
            (
                serde_json::json!([{"type": "ADD", "args": ["x"]}]),
                "unknown step type",
            ),
        ];
        for (steps, expected) in cases {
            let err = Plan::new(&request(steps)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let both: BuildStart =
            serde_json::from_value(serde_json::json!({"fromImage": "a", "fromTemplate": "b"}))
                .unwrap();
        assert!(matches!(Plan::new(&both), Err(PlanError::BothBases)));
        let aws: BuildStart = serde_json::from_value(serde_json::json!({
            "fromImage": "123.dkr.ecr.eu-west-1.amazonaws.com/app:1",
            "fromImageRegistry": {"type": "aws", "awsAccessKeyId": "a", "awsSecretAccessKey": "s", "awsRegion": "eu-west-1"}
        }))
        .unwrap();
        assert!(
            Plan::new(&aws)
                .unwrap_err()
                .to_string()
                .contains("get-login-password")
        );
        let bad_image: BuildStart =
            serde_json::from_value(serde_json::json!({"fromImage": "UPPER CASE"})).unwrap();
        assert!(matches!(
            Plan::new(&bad_image),
            Err(PlanError::Image { .. })
        ));
    }
}
