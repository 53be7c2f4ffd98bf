//! What goes into a statement and comes out of a row: the types both backends share.

use crate::{DbError, Result};

/// A parameter or a column's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u64> for Value {
    /// Values past `i64::MAX` (which nothing stored reaches) are kept as `i64::MAX`.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement, in order: `params![id, team, 3]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::Value::from($value)),*] as &[$crate::Value]
    };
}

/// A row a query returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// The row without its first `n` columns (to read the rest with a reader of its own).
    pub fn skip(&self, n: usize) -> Row {
        Row(self.0.iter().skip(n).cloned().collect())
    }

    fn at(&self, column: usize) -> &Value {
        self.0.get(column).unwrap_or(&Value::Null)
    }

    fn mismatch(&self, column: usize, wanted: &'static str) -> DbError {
        DbError::Column {
            column,
            found: self.at(column).kind(),
            wanted,
        }
    }

    pub fn text(&self, column: usize) -> Result<String> {
        self.opt_text(column)?
            .ok_or_else(|| self.mismatch(column, "text"))
    }

    pub fn opt_text(&self, column: usize) -> Result<Option<String>> {
        match self.at(column) {
            Value::Null => Ok(None),
            Value::Text(text) => Ok(Some(text.clone())),
            Value::Int(_) => Err(self.mismatch(column, "text")),
        }
    }

    pub fn int(&self, column: usize) -> Result<i64> {
        self.opt_int(column)?
            .ok_or_else(|| self.mismatch(column, "an integer"))
    }

    pub fn opt_int(&self, column: usize) -> Result<Option<i64>> {
        match self.at(column) {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            Value::Text(_) => Err(self.mismatch(column, "an integer")),
        }
    }

    /// An integer that cannot be negative (a negative one reads as 0).
    pub fn count(&self, column: usize) -> Result<u64> {
        Ok(u64::try_from(self.int(column)?).unwrap_or(0))
    }

    /// A 32-bit count or limit, when it is one.
    pub fn opt_u32(&self, column: usize) -> Result<Option<u32>> {
        Ok(self.opt_int(column)?.and_then(|v| u32::try_from(v).ok()))
    }

    /// A truth value: an integer, 0 being false (a PostgreSQL boolean arrives as one).
    pub fn flag(&self, column: usize) -> Result<bool> {
        Ok(self.int(column)? != 0)
    }
}
