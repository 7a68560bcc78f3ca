//! Between JSON and PostgreSQL values: parameters typed by the prepared statement, and result
//! columns read back as JSON.

use std::error::Error as StdError;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Number, Value as Json};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::StepError;
use crate::executors::input::type_name;

type BoxError = Box<dyn StdError + Sync + Send>;

/// One bound parameter, already converted to the type the statement expects.
#[derive(Debug)]
pub(super) enum Param {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Text(String),
    Json(Json),
    Uuid(Uuid),
    TimestampTz(DateTime<FixedOffset>),
    Timestamp(NaiveDateTime),
    Date(NaiveDate),
    /// A decimal number as text (`-12.50`), sent in PostgreSQL's binary `numeric` format.
    Numeric(String),
}

impl Param {
    /// Converts `value` to SQL type `ty`; `field` names it in errors (`params[2]`).
    pub(super) fn convert(field: &str, ty: &Type, value: &Json) -> Result<Self, StepError> {
        let mismatch = || {
            StepError::invalid_input(format!(
                "`{field}` cannot be bound as SQL type `{}`: got {}",
                ty.name(),
                type_name(value)
            ))
        };
        let bad_value = |what: &str| {
            StepError::invalid_input(format!(
                "`{field}` is not a valid {what} for SQL type `{}`: {value}",
                ty.name()
            ))
        };
        if value.is_null() {
            return Ok(Self::Null);
        }
        let param = match *ty {
            Type::BOOL => Self::Bool(value.as_bool().ok_or_else(mismatch)?),
            Type::INT2 | Type::INT4 | Type::INT8 => {
                let Json::Number(n) = value else {
                    return Err(mismatch());
                };
                let n = n.as_i64().ok_or_else(|| bad_value("integer"))?;
                match *ty {
                    Type::INT2 => Self::I16(i16::try_from(n).map_err(|_| bad_value("integer"))?),
                    Type::INT4 => Self::I32(i32::try_from(n).map_err(|_| bad_value("integer"))?),
                    _ => Self::I64(n),
                }
            }
            // A `float4` parameter is rounded to the nearest value it holds.
            Type::FLOAT4 => Self::F32(value.as_f64().ok_or_else(mismatch)? as f32),
            Type::FLOAT8 => Self::F64(value.as_f64().ok_or_else(mismatch)?),
            Type::NUMERIC => {
                let text = match value {
                    Json::Number(n) => match n.as_f64() {
                        Some(f) if !(n.is_i64() || n.is_u64()) => format!("{f}"),
                        _ => n.to_string(),
                    },
                    Json::String(s) => s.trim().to_owned(),
                    _ => return Err(mismatch()),
                };
                if !is_decimal(&text) {
                    return Err(bad_value("decimal number"));
                }
                Self::Numeric(text)
            }
            Type::JSON | Type::JSONB => Self::Json(value.clone()),
            Type::UUID => {
                let text = value.as_str().ok_or_else(mismatch)?;
                Self::Uuid(Uuid::parse_str(text.trim()).map_err(|_| bad_value("UUID"))?)
            }
            Type::TIMESTAMPTZ => {
                let text = value.as_str().ok_or_else(mismatch)?;
                Self::TimestampTz(
                    DateTime::parse_from_rfc3339(text.trim())
                        .map_err(|_| bad_value("RFC 3339 timestamp"))?,
                )
            }
            Type::TIMESTAMP => {
                let text = value.as_str().ok_or_else(mismatch)?.trim();
                let parsed = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
                    .map_err(|_| bad_value("timestamp (`2024-05-01T12:00:00`)"))?;
                Self::Timestamp(parsed)
            }
            Type::DATE => {
                let text = value.as_str().ok_or_else(mismatch)?;
                Self::Date(
                    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                        .map_err(|_| bad_value("date (`2024-05-01`)"))?,
                )
            }
            ref other if is_text(other) => Self::Text(value.as_str().ok_or_else(mismatch)?.into()),
            _ => {
                return Err(StepError::invalid_input(format!(
                    "`{field}` has SQL type `{}`, which the sql step cannot bind (cast the \
                     parameter in the statement, such as `$1::text`)",
                    ty.name()
                )));
            }
        };
        Ok(param)
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Bool(v) => v.to_sql(ty, out),
            Self::I16(v) => v.to_sql(ty, out),
            Self::I32(v) => v.to_sql(ty, out),
            Self::I64(v) => v.to_sql(ty, out),
            Self::F32(v) => v.to_sql(ty, out),
            Self::F64(v) => v.to_sql(ty, out),
            Self::Text(v) => v.to_sql(ty, out),
            Self::Json(v) => v.to_sql(ty, out),
            Self::Uuid(v) => v.to_sql(ty, out),
            Self::TimestampTz(v) => v.to_sql(ty, out),
            Self::Timestamp(v) => v.to_sql(ty, out),
            Self::Date(v) => v.to_sql(ty, out),
            Self::Numeric(v) => {
                out.extend_from_slice(&numeric_to_binary(v));
                Ok(IsNull::No)
            }
        }
    }

    /// Every parameter was converted for the type the statement asked for.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Types whose values are text: `text`, `varchar`, `char`, `name`, untyped literals and enums.
fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    ) || matches!(ty.kind(), Kind::Enum(_))
}

/// A plain decimal: an optional sign, digits, and an optional fraction (`-12.50`).
fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// PostgreSQL's binary `numeric`: digit count, weight, sign and display scale (each 16 bits),
/// then base-10000 digits, most significant first. `text` passed [`is_decimal`].
fn numeric_to_binary(text: &str) -> Vec<u8> {
    let negative = text.starts_with('-');
    let digits = text.trim_start_matches(['-', '+']);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let scale = frac.len();
    // Pad the integer part on the left and the fraction on the right to whole groups of four.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0'))
        })
        .collect();
    let mut weight = i64::try_from((int_pad + int.len()) / 4).unwrap_or(i64::MAX) - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + groups.len() * 2);
    for half in [
        i16::try_from(groups.len()).unwrap_or(i16::MAX),
        i16::try_from(weight).unwrap_or(i16::MAX),
    ] {
        out.extend_from_slice(&half.to_be_bytes());
    }
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&u16::try_from(scale).unwrap_or(u16::MAX).to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    out
}

/// A `numeric` read as its exact decimal text.
struct NumericText(String);

impl<'a> FromSql<'a> for NumericText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let word = |i: usize| -> Result<u16, BoxError> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "numeric value is truncated".into())
        };
        let ndigits = usize::from(word(0)?);
        let weight = i64::from(word(1)?.cast_signed());
        let sign = word(2)?;
        let scale = usize::from(word(3)?);
        match sign {
            0xC000 => return Ok(Self("NaN".into())),
            0xD000 => return Ok(Self("Infinity".into())),
            0xF000 => return Ok(Self("-Infinity".into())),
            _ => {}
        }
        let digits: Vec<u16> = (0..ndigits)
            .map(|i| word(4 + i))
            .collect::<Result<_, _>>()?;
        let digit = |i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| digits.get(i).copied())
                .unwrap_or(0)
        };
        let mut text = String::new();
        if sign == 0x4000 {
            text.push('-');
        }
        if weight < 0 {
            text.push('0');
        } else {
            text.push_str(&digit(0).to_string());
            for i in 1..=weight {
                text.push_str(&format!("{:04}", digit(i)));
            }
        }
        if scale > 0 {
            let mut frac = String::new();
            let mut i = weight + 1;
            while frac.len() < scale {
                frac.push_str(&format!("{:04}", digit(i)));
                i += 1;
            }
            frac.truncate(scale);
            text.push('.');
            text.push_str(&frac);
        }
        Ok(Self(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// Text of any text-like type, enums included.
struct AnyText(String);

impl<'a> FromSql<'a> for AnyText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Self(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        is_text(ty)
    }
}

/// A result row as a JSON mapping of column name to value.
pub(super) fn row_to_json(row: &Row) -> Result<Json, StepError> {
    let mut map = serde_json::Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let value = column_to_json(row, i, column.type_()).map_err(|e| match e {
            ReadError::Unsupported => StepError::invalid_input(format!(
                "column `{}` has SQL type `{}`, which the sql step cannot turn into JSON (cast it \
                 in the statement, such as `{}::text`)",
                column.name(),
                column.type_().name(),
                column.name()
            )),
            ReadError::Decode(e) => {
                StepError::internal(format!("column `{}` could not be read: {e}", column.name()))
            }
        })?;
        map.insert(column.name().to_owned(), value);
    }
    Ok(Json::Object(map))
}

enum ReadError {
    Unsupported,
    Decode(tokio_postgres::Error),
}

fn column_to_json(row: &Row, i: usize, ty: &Type) -> Result<Json, ReadError> {
    fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<Option<T>, ReadError> {
        row.try_get::<_, Option<T>>(i).map_err(ReadError::Decode)
    }
    fn float(f: f64) -> Json {
        Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
    }
    let value = match *ty {
        Type::BOOL => get::<bool>(row, i)?.map(Json::Bool),
        Type::INT2 => get::<i16>(row, i)?.map(Json::from),
        Type::INT4 => get::<i32>(row, i)?.map(Json::from),
        Type::INT8 => get::<i64>(row, i)?.map(Json::from),
        Type::OID => get::<u32>(row, i)?.map(Json::from),
        Type::FLOAT4 => get::<f32>(row, i)?.map(|f| float(f64::from(f))),
        Type::FLOAT8 => get::<f64>(row, i)?.map(float),
        Type::NUMERIC => get::<NumericText>(row, i)?.map(|n| Json::String(n.0)),
        Type::JSON | Type::JSONB => get::<Json>(row, i)?,
        Type::UUID => get::<Uuid>(row, i)?.map(|u| Json::String(u.to_string())),
        Type::TIMESTAMPTZ => get::<DateTime<Utc>>(row, i)?
            .map(|t| Json::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
        Type::TIMESTAMP => get::<NaiveDateTime>(row, i)?
            .map(|t| Json::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
        Type::DATE => get::<NaiveDate>(row, i)?.map(|d| Json::String(d.to_string())),
        Type::BYTEA => get::<Vec<u8>>(row, i)?.map(|b| Json::String(hex::encode(b))),
        ref other if is_text(other) => get::<AnyText>(row, i)?.map(|t| Json::String(t.0)),
        _ => return Err(ReadError::Unsupported),
    };
    Ok(value.unwrap_or(Json::Null))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip(text: &str) -> String {
        NumericText::from_sql(&Type::NUMERIC, &numeric_to_binary(text))
            .unwrap()
            .0
    }

    #[test]
    fn numerics_survive_the_binary_format() {
        for (given, read) in [
            ("0", "0"),
            ("12.50", "12.50"),
            ("-12.50", "-12.50"),
            ("123456789.000123", "123456789.000123"),
            ("0.0001", "0.0001"),
            ("0.00001", "0.00001"),
            ("10000", "10000"),
            ("-0.5", "-0.5"),
            ("007", "7"),
            (".5", "0.5"),
        ] {
            assert_eq!(round_trip(given), read, "{given}");
        }
        assert!(is_decimal("-1.25") && is_decimal("3") && !is_decimal("1e5") && !is_decimal("."));
    }

    #[test]
    fn parameters_follow_the_statement_types() {
        assert!(matches!(
            Param::convert("params[0]", &Type::INT4, &json!(7)).unwrap(),
            Param::I32(7)
        ));
        assert!(matches!(
            Param::convert("params[0]", &Type::TEXT, &Json::Null).unwrap(),
            Param::Null
        ));
        let err = Param::convert("params[1]", &Type::INT8, &json!("7")).unwrap_err();
        assert_eq!(err.code, "invalid_input");
        assert_eq!(
            err.message,
            "`params[1]` cannot be bound as SQL type `int8`: got a string"
        );
        let err = Param::convert("params[2]", &Type::INT2, &json!(70_000)).unwrap_err();
        assert!(
            err.message.contains("not a valid integer"),
            "{}",
            err.message
        );
        let err = Param::convert("params[0]", &Type::INET, &json!("10.0.0.1")).unwrap_err();
        assert!(err.message.contains("`$1::text`"), "{}", err.message);
    }
}
