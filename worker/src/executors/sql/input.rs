//! The `sql` executor's input: which statement to run, and bulk inserts turned into SQL.

use serde_json::{Map, Value as Json};

use crate::StepError;
use crate::executors::Input;
use crate::executors::input::wrong_type;

/// What a step does.
#[derive(Debug)]
pub(super) enum Action<'a> {
    Query(&'a str, &'a [Json]),
    Execute(&'a str, &'a [Json]),
    Insert(Insert<'a>),
}

#[derive(Debug)]
pub(super) struct Insert<'a> {
    /// The quoted table name.
    pub(super) table: String,
    pub(super) columns: Vec<&'a str>,
    pub(super) rows: &'a [Json],
}

pub(super) fn parse_action<'a>(input: &Input<'a>) -> Result<Action<'a>, StepError> {
    let params = input.array("params")?;
    let chosen: Vec<&str> = ["query", "execute", "insert"]
        .into_iter()
        .filter(|name| input.get(name).is_some())
        .collect();
    match chosen.as_slice() {
        ["query"] => Ok(Action::Query(
            input.required_str("query")?,
            params.unwrap_or_default(),
        )),
        ["execute"] => Ok(Action::Execute(
            input.required_str("execute")?,
            params.unwrap_or_default(),
        )),
        ["insert"] => {
            if params.is_some() {
                return Err(StepError::invalid_input(
                    "`params` goes with `query` or `execute`; `insert` takes its values from \
                     `insert.rows`",
                ));
            }
            parse_insert(input.required("insert")?).map(Action::Insert)
        }
        [] => Err(StepError::invalid_input(
            "one of `query`, `execute` or `insert` is required",
        )),
        several => Err(StepError::invalid_input(format!(
            "only one of `query`, `execute` or `insert` may be given (got `{}`)",
            several.join("`, `")
        ))),
    }
}

fn parse_insert(value: &Json) -> Result<Insert<'_>, StepError> {
    let fields = value
        .as_object()
        .ok_or_else(|| wrong_type("insert", "a mapping", value))?;
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["table", "rows", "columns"].contains(&k.as_str()))
    {
        return Err(StepError::invalid_input(format!(
            "unknown field `insert.{unknown}` (expected one of: table, rows, columns)"
        )));
    }
    let table = match fields.get("table") {
        Some(Json::String(table)) => table.trim(),
        None | Some(Json::Null) => {
            return Err(StepError::invalid_input("`insert.table` is required"));
        }
        Some(other) => return Err(wrong_type("insert.table", "a string", other)),
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
        return Err(StepError::invalid_input(format!(
            "`insert.table` must be a plain name or `schema.name` of letters, digits and `_`, \
             not `{table}`"
        )));
    }
    let table = parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".");
    let rows = match fields.get("rows") {
        Some(Json::Array(rows)) => rows.as_slice(),
        None | Some(Json::Null) => {
            return Err(StepError::invalid_input("`insert.rows` is required"));
        }
        Some(other) => return Err(wrong_type("insert.rows", "a list of mappings", other)),
    };
    for (i, row) in rows.iter().enumerate() {
        if !row.is_object() {
            return Err(wrong_type(&format!("insert.rows[{i}]"), "a mapping", row));
        }
    }
    let columns: Vec<&str> = match fields.get("columns") {
        None | Some(Json::Null) => rows
            .first()
            .and_then(Json::as_object)
            .map(|row| row.keys().map(String::as_str).collect())
            .unwrap_or_default(),
        Some(Json::Array(names)) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                name.as_str()
                    .ok_or_else(|| wrong_type(&format!("insert.columns[{i}]"), "a string", name))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("insert.columns", "a list of names", other)),
    };
    if columns.is_empty() && !rows.is_empty() {
        return Err(StepError::invalid_input(
            "`insert` has no columns: give `insert.columns` or fields in the first row",
        ));
    }
    if let Some(bad) = columns.iter().find(|c| !is_identifier(c)) {
        return Err(StepError::invalid_input(format!(
            "`insert.columns` must hold plain names of letters, digits and `_`, not `{bad}`"
        )));
    }
    Ok(Insert {
        table,
        columns,
        rows,
    })
}

impl Insert<'_> {
    /// `INSERT INTO "t" ("a", "b") VALUES ($1, $2), ($3, $4)` for `rows` rows.
    pub(super) fn sql(&self, rows: usize) -> String {
        let columns = self
            .columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let width = self.columns.len();
        let values = (0..rows)
            .map(|r| {
                let slots = (1..=width)
                    .map(|c| format!("${}", r * width + c))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("({slots})")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("INSERT INTO {} ({columns}) VALUES {values}", self.table)
    }

    /// The values of `rows` (the first being row `first` of the input), row by row, each with its
    /// field name for errors.
    pub(super) fn values<'r>(
        &self,
        rows: &'r [Json],
        first: usize,
    ) -> Result<Vec<(String, &'r Json)>, StepError> {
        let mut values = Vec::with_capacity(rows.len() * self.columns.len());
        for (i, row) in rows.iter().enumerate() {
            let index = first + i;
            let fields: &Map<String, Json> = row
                .as_object()
                .ok_or_else(|| wrong_type(&format!("insert.rows[{index}]"), "a mapping", row))?;
            if let Some(extra) = fields.keys().find(|k| !self.columns.contains(&k.as_str())) {
                return Err(StepError::invalid_input(format!(
                    "`insert.rows[{index}]` has field `{extra}`, which is not one of the columns ({})",
                    self.columns.join(", ")
                )));
            }
            for column in &self.columns {
                values.push((
                    format!("insert.rows[{index}].{column}"),
                    fields.get(*column).unwrap_or(&Json::Null),
                ));
            }
        }
        Ok(values)
    }
}

/// A plain SQL identifier: a letter or `_`, then letters, digits, `_` or `$`; at most 63 bytes.
fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}
