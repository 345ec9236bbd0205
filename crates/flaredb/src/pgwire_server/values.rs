//! SQLite values and declared types in PostgreSQL's vocabulary: the type a column is
//! reported as, encoding result values (text and binary formats) and decoding parameters.
//!
//! The mapping, by SQLite's own affinity rules on the declared type:
//!
//! | declared type                          | PostgreSQL type |
//! |----------------------------------------|-----------------|
//! | contains `BOOL`                        | `bool` (SQLite stores 0/1) |
//! | contains `INT`                         | `int8`          |
//! | `VARCHAR…`, `CHARACTER VARYING…`       | `varchar`       |
//! | contains `CHAR`, `CLOB`, `TEXT`        | `text`          |
//! | contains `BLOB`, `BYTEA`, `BINARY`     | `bytea`         |
//! | contains `REAL`, `FLOA`, `DOUB`, `NUMERIC`, `DECIMAL` | `float8` |
//! | contains `JSON`                        | `json`          |
//! | `DATE`, `TIME…`, `TIMESTAMP…`, `UUID`  | `text` (ISO 8601 / canonical strings) |
//! | none or anything else                  | from the values (integer → `int8`, real → `float8`, text → `text`, blob → `bytea`), else `text` |

use std::sync::Arc;

use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

use crate::sql::{Column, SqlError, SqlValue};

pub(super) const DATATYPE_MISMATCH: &str = "42804";
pub(super) const INVALID_TEXT_REPRESENTATION: &str = "22P02";
pub(super) const INVALID_BINARY_REPRESENTATION: &str = "22P03";
pub(super) const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub(super) const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// The PostgreSQL type for a SQLite declared type; `None` when the declaration does not say
/// (no type, `ANY`, …): the values decide.
pub(super) fn pg_type_for_decl(decl: &str) -> Option<Type> {
    let d = decl.trim().to_ascii_uppercase();
    if d.is_empty() {
        return None;
    }
    let starts = |p: &str| d.starts_with(p);
    Some(if d.contains("BOOL") {
        Type::BOOL
    } else if d.contains("INT") {
        Type::INT8
    } else if starts("VARCHAR")
        || starts("CHARACTER VARYING")
        || starts("NVARCHAR")
        || starts("VARYING CHARACTER")
    {
        Type::VARCHAR
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Type::TEXT
    } else if d.contains("BLOB") || d.contains("BYTEA") || d.contains("BINARY") {
        Type::BYTEA
    } else if d.contains("REAL")
        || d.contains("FLOA")
        || d.contains("DOUB")
        || d.contains("NUMERIC")
        || d.contains("DECIMAL")
    {
        Type::FLOAT8
    } else if d.contains("JSON") {
        Type::JSON
    } else if d.contains("DATE") || d.contains("TIME") || d.contains("UUID") {
        Type::TEXT
    } else {
        return None;
    })
}

/// A PostgreSQL type by one of its names (for `$1::type` casts).
pub(super) fn pg_type_by_name(name: &str) -> Option<Type> {
    Some(match name.to_ascii_lowercase().as_str() {
        "int2" | "smallint" => Type::INT2,
        "int4" | "int" | "integer" => Type::INT4,
        "int8" | "bigint" => Type::INT8,
        "float4" | "real" => Type::FLOAT4,
        "float8" | "float" => Type::FLOAT8,
        "numeric" | "decimal" => Type::NUMERIC,
        "bool" | "boolean" => Type::BOOL,
        "text" => Type::TEXT,
        "varchar" => Type::VARCHAR,
        "char" | "bpchar" | "character" => Type::BPCHAR,
        "name" => Type::NAME,
        "bytea" => Type::BYTEA,
        "timestamp" => Type::TIMESTAMP,
        "timestamptz" => Type::TIMESTAMPTZ,
        "date" => Type::DATE,
        "time" => Type::TIME,
        "uuid" => Type::UUID,
        "json" => Type::JSON,
        "jsonb" => Type::JSONB,
        "oid" => Type::OID,
        _ => return None,
    })
}

fn type_of_value(v: &SqlValue) -> Option<Type> {
    match v {
        SqlValue::Null => None,
        SqlValue::Integer(_) => Some(Type::INT8),
        SqlValue::Real(_) => Some(Type::FLOAT8),
        SqlValue::Text(_) => Some(Type::TEXT),
        SqlValue::Blob { .. } => Some(Type::BYTEA),
    }
}

/// A result column as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColType {
    pub name: String,
    pub ty: Type,
}

/// Column types for a result whose rows are all known (simple query): the declared type,
/// else the first non-null value's; a column whose values do not all fit its type is
/// reported as `text`.
pub(super) fn column_types_from_rows(columns: &[Column], rows: &[Vec<SqlValue>]) -> Vec<ColType> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let values = || rows.iter().filter_map(|r| r.get(i));
            let ty = c
                .decl_type
                .as_deref()
                .and_then(pg_type_for_decl)
                .or_else(|| values().find_map(type_of_value))
                .unwrap_or(Type::TEXT);
            let fits = values().all(|v| fits(v, &ty));
            ColType {
                name: c.name.clone(),
                ty: if fits { ty } else { Type::TEXT },
            }
        })
        .collect()
}

fn fits(v: &SqlValue, ty: &Type) -> bool {
    match *ty {
        Type::INT8 | Type::INT4 | Type::INT2 => as_i64(v).is_some() || matches!(v, SqlValue::Null),
        Type::FLOAT8 | Type::FLOAT4 => as_f64(v).is_some() || matches!(v, SqlValue::Null),
        Type::BOOL => as_bool(v).is_some() || matches!(v, SqlValue::Null),
        Type::BYTEA => !matches!(v, SqlValue::Real(_)),
        _ => true,
    }
}

fn as_i64(v: &SqlValue) -> Option<i64> {
    match v {
        SqlValue::Integer(i) => Some(*i),
        SqlValue::Real(f) if f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64 => {
            Some(*f as i64)
        }
        SqlValue::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        SqlValue::Text(t) => parse_float(t),
        _ => None,
    }
}

fn parse_float(t: &str) -> Option<f64> {
    match t.trim().to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" | "+infinity" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn as_bool(v: &SqlValue) -> Option<bool> {
    match v {
        SqlValue::Integer(i) => Some(*i != 0),
        SqlValue::Real(f) => Some(*f != 0.0),
        SqlValue::Text(t) => parse_bool(t),
        _ => None,
    }
}

fn parse_bool(t: &str) -> Option<bool> {
    match t.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A real as PostgreSQL prints a float8 (shortest exact form, exponent for large/small).
pub(super) fn format_real(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e15).contains(&abs) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    } else {
        format!("{f}")
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A value's natural text form.
fn as_text(v: &SqlValue) -> Option<String> {
    match v {
        SqlValue::Null => None,
        SqlValue::Integer(i) => Some(i.to_string()),
        SqlValue::Real(f) => Some(format_real(*f)),
        SqlValue::Text(t) => Some(t.clone()),
        SqlValue::Blob { blob } => Some(hex(&blob.0)),
    }
}

/// Field descriptions for result columns; `format` gives each column's requested format.
pub(super) fn field_infos(
    cols: &[ColType],
    format: impl Fn(usize) -> FieldFormat,
) -> Vec<FieldInfo> {
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            let size = match c.ty {
                Type::INT8 | Type::FLOAT8 => 8,
                Type::INT4 | Type::FLOAT4 => 4,
                Type::INT2 => 2,
                Type::BOOL => 1,
                _ => -1,
            };
            FieldInfo::new(c.name.clone(), None, None, c.ty.clone(), format(i)).with_type_size(size)
        })
        .collect()
}

fn mismatch(field: &FieldInfo, v: &SqlValue) -> SqlError {
    let what = match v {
        SqlValue::Integer(_) => "an integer",
        SqlValue::Real(_) => "a real",
        SqlValue::Text(_) => "text",
        SqlValue::Blob { .. } => "a blob",
        SqlValue::Null => "null",
    };
    SqlError::new(
        DATATYPE_MISMATCH,
        format!(
            "column \"{}\" is reported as {} but holds {what} that cannot be sent as one in binary format",
            field.name(),
            field.datatype().name()
        ),
    )
}

/// Encodes result rows for the given columns (types and formats).
pub(super) fn encode_rows(
    schema: &Arc<Vec<FieldInfo>>,
    rows: Vec<Vec<SqlValue>>,
) -> Result<Vec<DataRow>, SqlError> {
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if row.len() != schema.len() {
            return Err(SqlError::new(
                "XX000",
                format!("row has {} values for {} columns", row.len(), schema.len()),
            ));
        }
        for (v, field) in row.iter().zip(schema.iter()) {
            encode_value(&mut encoder, v, field)?;
        }
        out.push(encoder.take_row());
    }
    Ok(out)
}

fn encode_value(enc: &mut DataRowEncoder, v: &SqlValue, field: &FieldInfo) -> Result<(), SqlError> {
    let ty = field.datatype();
    let format = field.format();
    let options = field.format_options().clone();
    let internal = |e: pgwire::error::PgWireError| SqlError::new("XX000", e.to_string());
    let binary = format == FieldFormat::Binary;
    macro_rules! put {
        ($value:expr) => {
            enc.encode_field_with_type_and_format(&$value, ty, format, &options)
                .map_err(internal)
        };
    }
    if matches!(v, SqlValue::Null) {
        return put!(None::<i64>);
    }
    // In text format a value that does not fit its column type is sent as it is: the
    // client reads text anyway. In binary format it must convert or fail.
    let text_fallback = |enc: &mut DataRowEncoder| -> Result<(), SqlError> {
        if binary {
            return Err(mismatch(field, v));
        }
        let text = as_text(v).unwrap_or_default();
        enc.encode_field_with_type_and_format(&text.as_str(), ty, format, &options)
            .map_err(internal)
    };
    match *ty {
        Type::INT8 => match as_i64(v) {
            Some(i) => put!(i),
            None => text_fallback(enc),
        },
        Type::INT4 => match as_i64(v).and_then(|i| i32::try_from(i).ok()) {
            Some(i) => put!(i),
            None => text_fallback(enc),
        },
        Type::INT2 => match as_i64(v).and_then(|i| i16::try_from(i).ok()) {
            Some(i) => put!(i),
            None => text_fallback(enc),
        },
        // pgwire's own float text form is Rust's ("3.0"); PostgreSQL prints "3".
        Type::FLOAT8 | Type::FLOAT4 if !binary => match as_f64(v) {
            Some(f) => put!(format_real(f).as_str()),
            None => text_fallback(enc),
        },
        Type::FLOAT8 => match as_f64(v) {
            Some(f) => put!(f),
            None => text_fallback(enc),
        },
        Type::FLOAT4 => match as_f64(v) {
            Some(f) => put!(f as f32),
            None => text_fallback(enc),
        },
        Type::BOOL => match as_bool(v) {
            Some(b) => put!(b),
            None => text_fallback(enc),
        },
        Type::BYTEA => match v {
            SqlValue::Blob { blob } => put!(blob.0.as_slice()),
            SqlValue::Text(t) => put!(t.as_bytes()),
            other => {
                let text = as_text(other).unwrap_or_default();
                put!(text.as_bytes())
            }
        },
        _ => {
            let text = match v {
                // A blob in a text column: valid UTF-8 as is, anything else as bytea hex.
                SqlValue::Blob { blob } => {
                    String::from_utf8(blob.0.clone()).unwrap_or_else(|_| hex(&blob.0))
                }
                other => as_text(other).unwrap_or_default(),
            };
            put!(text.as_str())
        }
    }
}

/// Decodes one bound parameter of type `ty` sent in text or binary format.
pub(super) fn decode_param(
    raw: Option<&[u8]>,
    ty: &Type,
    binary: bool,
) -> Result<SqlValue, SqlError> {
    let Some(raw) = raw else {
        return Ok(SqlValue::Null);
    };
    if binary {
        decode_binary(raw, ty)
    } else {
        let text = std::str::from_utf8(raw).map_err(|_| {
            SqlError::new(CHARACTER_NOT_IN_REPERTOIRE, "parameter is not valid UTF-8")
        })?;
        decode_text(text, ty)
    }
}

fn invalid_text(ty: &Type, text: &str) -> SqlError {
    SqlError::new(
        INVALID_TEXT_REPRESENTATION,
        format!("invalid input syntax for type {}: \"{text}\"", ty.name()),
    )
}

fn decode_text(text: &str, ty: &Type) -> Result<SqlValue, SqlError> {
    Ok(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
            SqlValue::Integer(text.trim().parse().map_err(|_| invalid_text(ty, text))?)
        }
        Type::FLOAT4 | Type::FLOAT8 => {
            SqlValue::Real(parse_float(text).ok_or_else(|| invalid_text(ty, text))?)
        }
        Type::NUMERIC => match text.trim().parse::<i64>() {
            Ok(i) => SqlValue::Integer(i),
            Err(_) => SqlValue::Real(parse_float(text).ok_or_else(|| invalid_text(ty, text))?),
        },
        Type::BOOL => SqlValue::Integer(i64::from(
            parse_bool(text).ok_or_else(|| invalid_text(ty, text))?,
        )),
        Type::BYTEA => SqlValue::blob(parse_bytea(text).ok_or_else(|| invalid_text(ty, text))?),
        _ => SqlValue::Text(text.to_owned()),
    })
}

/// bytea text input: `\x` hex, or the escape format (`\\`, `\nnn` octal).
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(h) = text.strip_prefix("\\x") {
        if h.len() % 2 != 0 {
            return None;
        }
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect();
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let oct = text.get(i + 1..i + 4)?;
                out.push(u8::from_str_radix(oct, 8).ok()?);
                i += 4;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn fixed<const N: usize>(raw: &[u8], ty: &Type) -> Result<[u8; N], SqlError> {
    raw.try_into().map_err(|_| {
        SqlError::new(
            INVALID_BINARY_REPRESENTATION,
            format!(
                "binary {} parameter has {} bytes, expected {N}",
                ty.name(),
                raw.len()
            ),
        )
    })
}

/// Microseconds since 2000-01-01 (PostgreSQL's epoch) as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn format_timestamp(micros: i64) -> String {
    const PG_EPOCH_DAYS: i64 = 10_957; // 1970-01-01 → 2000-01-01
    let days = micros.div_euclid(86_400_000_000) + PG_EPOCH_DAYS;
    let of_day = micros.rem_euclid(86_400_000_000);
    format!("{} {}", format_date(days), format_time(of_day))
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (Howard Hinnant's civil-from-days).
fn format_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn format_time(micros_of_day: i64) -> String {
    let secs = micros_of_day / 1_000_000;
    let frac = micros_of_day % 1_000_000;
    let base = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

fn decode_binary(raw: &[u8], ty: &Type) -> Result<SqlValue, SqlError> {
    let utf8 = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map(SqlValue::Text)
            .map_err(|_| SqlError::new(CHARACTER_NOT_IN_REPERTOIRE, "parameter is not valid UTF-8"))
    };
    Ok(match *ty {
        Type::INT2 => SqlValue::Integer(i16::from_be_bytes(fixed(raw, ty)?).into()),
        Type::INT4 => SqlValue::Integer(i32::from_be_bytes(fixed(raw, ty)?).into()),
        Type::OID => SqlValue::Integer(u32::from_be_bytes(fixed(raw, ty)?).into()),
        Type::INT8 => SqlValue::Integer(i64::from_be_bytes(fixed(raw, ty)?)),
        Type::FLOAT4 => SqlValue::Real(f32::from_be_bytes(fixed(raw, ty)?).into()),
        Type::FLOAT8 => SqlValue::Real(f64::from_be_bytes(fixed(raw, ty)?)),
        Type::BOOL => SqlValue::Integer(i64::from(fixed::<1>(raw, ty)?[0] != 0)),
        Type::BYTEA => SqlValue::blob(raw.to_vec()),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::JSON
        | Type::XML => utf8(raw)?,
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => utf8(rest)?,
            _ => {
                return Err(SqlError::new(
                    INVALID_BINARY_REPRESENTATION,
                    "unsupported jsonb version",
                ));
            }
        },
        Type::TIMESTAMP => SqlValue::Text(format_timestamp(i64::from_be_bytes(fixed(raw, ty)?))),
        Type::TIMESTAMPTZ => SqlValue::Text(format!(
            "{}+00:00",
            format_timestamp(i64::from_be_bytes(fixed(raw, ty)?))
        )),
        Type::DATE => SqlValue::Text(format_date(
            i64::from(i32::from_be_bytes(fixed(raw, ty)?)) + 10_957,
        )),
        Type::TIME => SqlValue::Text(format_time(i64::from_be_bytes(fixed(raw, ty)?))),
        Type::UUID => {
            let b: [u8; 16] = fixed(raw, ty)?;
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            SqlValue::Text(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        _ => {
            return Err(SqlError::new(
                FEATURE_NOT_SUPPORTED,
                format!(
                    "parameters of type {} are not supported in binary format; send them as text",
                    ty.name()
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_by_affinity() {
        for (decl, ty) in [
            ("INTEGER", Some(Type::INT8)),
            ("bigint", Some(Type::INT8)),
            ("SMALLINT", Some(Type::INT8)),
            ("BOOLEAN", Some(Type::BOOL)),
            ("VARCHAR(20)", Some(Type::VARCHAR)),
            ("TEXT", Some(Type::TEXT)),
            ("CHAR(3)", Some(Type::TEXT)),
            ("BLOB", Some(Type::BYTEA)),
            ("BYTEA", Some(Type::BYTEA)),
            ("REAL", Some(Type::FLOAT8)),
            ("DOUBLE PRECISION", Some(Type::FLOAT8)),
            ("NUMERIC(10,2)", Some(Type::FLOAT8)),
            ("JSON", Some(Type::JSON)),
            ("TIMESTAMP", Some(Type::TEXT)),
            ("", None),
            ("ANY", None),
        ] {
            assert_eq!(pg_type_for_decl(decl), ty, "{decl}");
        }
    }

    #[test]
    fn untyped_columns_take_the_values_type_and_mixed_ones_become_text() {
        let cols = vec![
            Column {
                name: "a".into(),
                decl_type: None,
            },
            Column {
                name: "b".into(),
                decl_type: Some("INTEGER".into()),
            },
            Column {
                name: "c".into(),
                decl_type: None,
            },
            Column {
                name: "d".into(),
                decl_type: None,
            },
        ];
        let rows = vec![
            vec![
                SqlValue::Null,
                SqlValue::Integer(1),
                SqlValue::Integer(1),
                SqlValue::Null,
            ],
            vec![
                SqlValue::Real(1.5),
                SqlValue::Text("x".into()),
                SqlValue::Text("y".into()),
                SqlValue::Null,
            ],
        ];
        let types: Vec<Type> = column_types_from_rows(&cols, &rows)
            .into_iter()
            .map(|c| c.ty)
            .collect();
        assert_eq!(
            types,
            vec![Type::FLOAT8, Type::TEXT, Type::TEXT, Type::TEXT]
        );
    }

    #[test]
    fn parameters_decode_from_text_and_binary() {
        let b = |raw: &[u8], ty: Type| decode_param(Some(raw), &ty, true).unwrap();
        let t = |raw: &str, ty: Type| decode_param(Some(raw.as_bytes()), &ty, false).unwrap();
        assert_eq!(b(&7i64.to_be_bytes(), Type::INT8), SqlValue::Integer(7));
        assert_eq!(b(&(-7i32).to_be_bytes(), Type::INT4), SqlValue::Integer(-7));
        assert_eq!(b(&3i16.to_be_bytes(), Type::INT2), SqlValue::Integer(3));
        assert_eq!(b(&1.5f64.to_be_bytes(), Type::FLOAT8), SqlValue::Real(1.5));
        assert_eq!(b(&0.5f32.to_be_bytes(), Type::FLOAT4), SqlValue::Real(0.5));
        assert_eq!(b(&[1], Type::BOOL), SqlValue::Integer(1));
        assert_eq!(b(b"hi", Type::TEXT), SqlValue::Text("hi".into()));
        assert_eq!(b(b"hi", Type::VARCHAR), SqlValue::Text("hi".into()));
        assert_eq!(b(&[0, 255], Type::BYTEA), SqlValue::blob(vec![0, 255]));
        // 2024-02-29 12:34:56.5 is 762_525_296_500_000 µs after 2000-01-01
        assert_eq!(
            b(&762_525_296_500_000i64.to_be_bytes(), Type::TIMESTAMP),
            SqlValue::Text("2024-02-29 12:34:56.5".into())
        );
        assert_eq!(
            b(&0i32.to_be_bytes(), Type::DATE),
            SqlValue::Text("2000-01-01".into())
        );
        assert!(decode_param(Some(&[1, 2]), &Type::INT8, true).is_err());
        assert_eq!(
            decode_param(None, &Type::INT8, true).unwrap(),
            SqlValue::Null
        );

        assert_eq!(t("42", Type::INT8), SqlValue::Integer(42));
        assert_eq!(t("42", Type::INT4), SqlValue::Integer(42));
        assert_eq!(t("2.25", Type::FLOAT8), SqlValue::Real(2.25));
        assert_eq!(t("true", Type::BOOL), SqlValue::Integer(1));
        assert_eq!(t("f", Type::BOOL), SqlValue::Integer(0));
        assert_eq!(t("\\x00ff", Type::BYTEA), SqlValue::blob(vec![0, 255]));
        assert_eq!(
            t("a\\\\b\\001", Type::BYTEA),
            SqlValue::blob(vec![b'a', b'\\', b'b', 1])
        );
        assert_eq!(
            t("2024-01-01 00:00:00", Type::TIMESTAMP),
            SqlValue::Text("2024-01-01 00:00:00".into())
        );
        let err = decode_param(Some(b"x1"), &Type::INT8, false).unwrap_err();
        assert_eq!(err.sqlstate, INVALID_TEXT_REPRESENTATION);
    }

    #[test]
    fn reals_print_like_postgres() {
        assert_eq!(format_real(1.5), "1.5");
        assert_eq!(format_real(2.0), "2");
        assert_eq!(format_real(1e21), "1e+21");
        assert_eq!(format_real(1.5e-7), "1.5e-7");
        assert_eq!(format_real(f64::INFINITY), "Infinity");
    }

    #[test]
    fn rows_encode_in_text_and_binary_and_refuse_impossible_binary_values() {
        let cols = vec![
            ColType {
                name: "i".into(),
                ty: Type::INT8,
            },
            ColType {
                name: "f".into(),
                ty: Type::FLOAT8,
            },
            ColType {
                name: "b".into(),
                ty: Type::BOOL,
            },
            ColType {
                name: "t".into(),
                ty: Type::TEXT,
            },
            ColType {
                name: "x".into(),
                ty: Type::BYTEA,
            },
        ];
        let row = vec![
            SqlValue::Integer(5),
            SqlValue::Real(0.5),
            SqlValue::Integer(1),
            SqlValue::Text("é".into()),
            SqlValue::blob(vec![1, 2]),
        ];
        for format in [FieldFormat::Text, FieldFormat::Binary] {
            let schema = Arc::new(field_infos(&cols, |_| format));
            let rows = encode_rows(&schema, vec![row.clone(), vec![SqlValue::Null; 5]]).unwrap();
            assert_eq!(rows.len(), 2);
        }
        let schema = Arc::new(field_infos(&cols[..1], |_| FieldFormat::Binary));
        let err = encode_rows(&schema, vec![vec![SqlValue::Text("abc".into())]]).unwrap_err();
        assert_eq!(err.sqlstate, DATATYPE_MISMATCH);
        let schema = Arc::new(field_infos(&cols[..1], |_| FieldFormat::Text));
        assert!(encode_rows(&schema, vec![vec![SqlValue::Text("abc".into())]]).is_ok());
    }
}
