//! Influx line protocol: `measurement[,tag=value...] field=value[,field=value...] [timestamp]` per line.
//!
//! A small hand-written parser of InfluxData's grammar (`line-protocol.ebnf` in
//! `influxdata/line-protocol`), chosen over the `influxdb-line-protocol` crate because the dead
//! letter table needs precise, line-numbered reasons (that crate reports many failures as a
//! generic nom error) and because it would pull nom and snafu into the core for ~300 lines.
//!
//! - Lines end with `\n` or `\r\n`; blank lines and lines starting with `#` (after leading
//!   spaces) are skipped.
//! - Escapes: `\,` and `\ ` in measurements; `\,`, `\=` and `\ ` in tag keys, tag values and
//!   field keys; `\"` and `\\` in string field values. A backslash before any other character is
//!   a literal backslash. An element may not end with a backslash or contain control characters.
//! - Field values: floats (`1`, `-1.5`, `.5`, `1e3`), integers (`1i`), unsigned integers (`1u`),
//!   booleans (`t`, `T`, `true`, `True`, `TRUE` and the same for false) and double-quoted
//!   strings (which may span lines). There is no NaN or infinity literal, and a float that
//!   overflows `f64` is out of range.
//! - The timestamp is optional in the grammar ([`Point::timestamp`] is `None` then), but
//!   [`decode`] requires it; its unit is detected by magnitude (nanoseconds by default).

use damselfly_schemas::MetricMessage;

use super::{FieldValue, Format, FormatError, Origin, Point, points_to_messages};

/// A line that is not valid line protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("influx line {line}: {kind}")]
pub struct InfluxError {
    /// The 1-based line the failing point starts on.
    pub line: usize,
    /// How many points parsed before it (0: the value never looked like line protocol).
    pub points_before: usize,
    /// What is wrong.
    pub kind: LineError,
}

/// The part of a line an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The measurement name.
    Measurement,
    /// A tag key.
    TagKey,
    /// A tag value.
    TagValue,
    /// A field key.
    FieldKey,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Measurement => "measurement",
            Part::TagKey => "tag key",
            Part::TagValue => "tag value",
            Part::FieldKey => "field key",
        })
    }
}

/// Why one line is not valid line protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    /// An element is empty (e.g. `m,=v f=1`).
    #[error("empty {0}")]
    Empty(Part),
    /// An element ends with a backslash, which escapes nothing.
    #[error("{0} ends with a backslash")]
    TrailingBackslash(Part),
    /// A control character (tab, NUL, ...) in a name.
    #[error("control character {ch:?} in {part}")]
    ControlChar {
        /// Where.
        part: Part,
        /// Which.
        ch: char,
    },
    /// A name or string that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
    /// `tag` without `=value`.
    #[error("tag `{0}` has no value")]
    TagWithoutValue(String),
    /// `tag=a=b`: the second `=` must be escaped.
    #[error("tag `{0}`: unescaped `=` in the value (write `\\=`)")]
    UnescapedEquals(String),
    /// A measurement (and tags) with no field set.
    #[error("no fields (want `measurement[,tag=value...] field=value[,field=value...] timestamp`)")]
    MissingFields,
    /// `field` or `field=` without a value.
    #[error("field `{0}` has no value")]
    FieldWithoutValue(String),
    /// A string field value without its closing quote.
    #[error("field `{0}`: unterminated quoted string")]
    UnterminatedString(String),
    /// `f="a"b`: text glued to a closing quote.
    #[error("field `{0}`: unexpected text after the quoted string")]
    AfterString(String),
    /// A field value of no line protocol type.
    #[error(
        "field `{key}`: invalid value `{value}` (want a float, an integer like 1i, an unsigned \
         integer like 1u, true/false or a quoted string; there is no NaN or infinity)"
    )]
    InvalidValue {
        /// The field.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A number too large for its type.
    #[error("field `{key}`: `{value}` is out of range for {kind}")]
    OutOfRange {
        /// The field.
        key: String,
        /// The value as written.
        value: String,
        /// The type it overflows.
        kind: &'static str,
    },
    /// A timestamp that is not a 64-bit integer.
    #[error("invalid timestamp `{0}` (want a 64-bit integer)")]
    InvalidTimestamp(String),
    /// Something after the timestamp.
    #[error("unexpected `{0}` after the timestamp")]
    Trailing(String),
}

/// Parses every line of `value` into points; the first invalid line is the error.
pub fn parse(value: &[u8]) -> Result<Vec<Point>, InfluxError> {
    let mut cur = Cursor {
        b: value,
        pos: 0,
        line: 1,
    };
    let mut points = Vec::new();
    loop {
        cur.skip_spaces();
        if cur.peek().is_none() {
            break;
        }
        if cur.at_eol() {
            cur.end_line();
            continue;
        }
        if cur.peek() == Some(b'#') {
            cur.skip_line();
            continue;
        }
        let line = cur.line;
        match cur.point(line) {
            Ok(point) => points.push(point),
            Err(kind) => {
                return Err(InfluxError {
                    line,
                    points_before: points.len(),
                    kind,
                });
            }
        }
    }
    Ok(points)
}

/// Parses line protocol and maps it onto native messages (see [`super::points_to_messages`]).
pub fn decode(value: &[u8]) -> Result<Vec<MetricMessage>, FormatError> {
    points_to_messages(&parse(value)?, Format::Influx)
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.b.get(self.pos.saturating_add(n)).copied()
    }

    /// At the end of the input, a `\n` or a `\r\n`.
    fn at_eol(&self) -> bool {
        match self.peek() {
            None | Some(b'\n') => true,
            Some(b'\r') => matches!(self.peek_at(1), None | Some(b'\n')),
            _ => false,
        }
    }

    fn end_line(&mut self) {
        if self.peek() == Some(b'\r') {
            self.pos += 1;
        }
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }

    fn skip_line(&mut self) {
        while !self.at_eol() {
            self.pos += 1;
        }
        self.end_line();
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// The bytes up to a space, the end of the line, or (with `comma`) a comma.
    fn token(&mut self, comma: bool) -> &'a [u8] {
        let start = self.pos;
        while !self.at_eol() {
            match self.peek() {
                Some(b' ') => break,
                Some(b',') if comma => break,
                _ => self.pos += 1,
            }
        }
        self.b.get(start..self.pos).unwrap_or_default()
    }

    fn point(&mut self, line: usize) -> Result<Point, LineError> {
        let measurement = self.name(Part::Measurement)?;
        let mut tags = Vec::new();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key = self.name(Part::TagKey)?;
            if self.peek() != Some(b'=') {
                return Err(LineError::TagWithoutValue(clip(&key)));
            }
            self.pos += 1;
            let value = match self.name(Part::TagValue) {
                Err(LineError::Empty(_)) => return Err(LineError::TagWithoutValue(clip(&key))),
                other => other?,
            };
            if self.peek() == Some(b'=') {
                return Err(LineError::UnescapedEquals(clip(&key)));
            }
            tags.push((key, value));
        }
        self.skip_spaces();
        if self.at_eol() {
            return Err(LineError::MissingFields);
        }
        let mut fields = Vec::new();
        loop {
            let key = self.name(Part::FieldKey)?;
            if self.peek() != Some(b'=') {
                return Err(LineError::FieldWithoutValue(clip(&key)));
            }
            self.pos += 1;
            let value = self.field_value(&key)?;
            fields.push((key, value));
            if self.peek() != Some(b',') {
                break;
            }
            self.pos += 1;
        }
        // Here: a space or the end of the line.
        self.skip_spaces();
        let mut timestamp = None;
        if !self.at_eol() {
            timestamp = Some(parse_timestamp(self.token(false))?);
            self.skip_spaces();
            if !self.at_eol() {
                return Err(LineError::Trailing(clip_bytes(self.token(false))));
            }
        }
        self.end_line();
        Ok(Point {
            measurement,
            tags,
            fields,
            timestamp,
            origin: Origin::InfluxLine(line),
        })
    }

    /// A measurement, tag key, tag value or field key, unescaped.
    fn name(&mut self, part: Part) -> Result<String, LineError> {
        let delimiters: &[u8] = match part {
            Part::Measurement => b", ",
            _ => b",= ",
        };
        let mut out = Vec::new();
        while !self.at_eol() {
            let Some(c) = self.peek() else { break };
            if c == b'\\' {
                match self.peek_at(1) {
                    None | Some(b'\n' | b'\r') => return Err(LineError::TrailingBackslash(part)),
                    Some(next) if delimiters.contains(&next) => {
                        out.push(next);
                        self.pos += 2;
                    }
                    Some(_) => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            } else if delimiters.contains(&c) {
                break;
            } else if c < 0x20 || c == 0x7f {
                return Err(LineError::ControlChar {
                    part,
                    ch: char::from(c),
                });
            } else {
                out.push(c);
                self.pos += 1;
            }
        }
        if out.is_empty() {
            return Err(LineError::Empty(part));
        }
        String::from_utf8(out).map_err(|_| LineError::NotUtf8(format!("a {part}")))
    }

    /// A field value; leaves the cursor on `,`, a space or the end of the line.
    fn field_value(&mut self, key: &str) -> Result<FieldValue, LineError> {
        if self.peek() != Some(b'"') {
            let token = self.token(true);
            if token.is_empty() {
                return Err(LineError::FieldWithoutValue(clip(key)));
            }
            return scalar(key, token);
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(LineError::UnterminatedString(clip(key))),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => match self.peek_at(1) {
                    Some(c @ (b'"' | b'\\')) => {
                        out.push(c);
                        self.pos += 2;
                    }
                    Some(_) => {
                        out.push(b'\\');
                        self.pos += 1;
                    }
                    None => return Err(LineError::UnterminatedString(clip(key))),
                },
                Some(c) => {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        if !(self.at_eol() || matches!(self.peek(), Some(b',' | b' '))) {
            return Err(LineError::AfterString(clip(key)));
        }
        String::from_utf8(out)
            .map(FieldValue::String)
            .map_err(|_| LineError::NotUtf8(format!("field `{}`", clip(key))))
    }
}

/// An unquoted field value: boolean, integer, unsigned integer or float.
fn scalar(key: &str, token: &[u8]) -> Result<FieldValue, LineError> {
    match token {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Ok(FieldValue::Boolean(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Ok(FieldValue::Boolean(false)),
        _ => {}
    }
    let invalid = || LineError::InvalidValue {
        key: clip(key),
        value: clip_bytes(token),
    };
    let out_of_range = |kind| LineError::OutOfRange {
        key: clip(key),
        value: clip_bytes(token),
        kind,
    };
    let text = std::str::from_utf8(token).map_err(|_| invalid())?;
    if let Some(digits) = text.strip_suffix('i') {
        if !is_integer(digits.strip_prefix('-').unwrap_or(digits)) {
            return Err(invalid());
        }
        return digits
            .parse()
            .map(FieldValue::Integer)
            .map_err(|_| out_of_range("a 64-bit integer"));
    }
    if let Some(digits) = text.strip_suffix('u') {
        if !is_integer(digits) {
            return Err(invalid());
        }
        return digits
            .parse()
            .map(FieldValue::Unsigned)
            .map_err(|_| out_of_range("a 64-bit unsigned integer"));
    }
    if !is_float(text) {
        return Err(invalid());
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(FieldValue::Float(x)),
        Ok(_) => Err(out_of_range("a 64-bit float")),
        Err(_) => Err(invalid()),
    }
}

fn is_integer(digits: &str) -> bool {
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `[-] (digits [. [digits]] | . digits) [(e|E) [+|-] digits]`, as the grammar has it.
fn is_float(text: &str) -> bool {
    let b = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let digits_from = |i: usize| b.iter().skip(i).take_while(|c| c.is_ascii_digit()).count();
    let int = digits_from(0);
    let mut i = int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        frac = digits_from(i + 1);
        i += 1 + frac;
    }
    if int == 0 && frac == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = digits_from(i);
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

fn parse_timestamp(token: &[u8]) -> Result<i64, LineError> {
    let invalid = || LineError::InvalidTimestamp(clip_bytes(token));
    let text = std::str::from_utf8(token).map_err(|_| invalid())?;
    if !is_integer(text.strip_prefix('-').unwrap_or(text)) {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

/// At most 40 characters of `s` with control characters escaped, for error messages.
fn clip(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == 40 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn clip_bytes(b: &[u8]) -> String {
    clip(&String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &str) -> Point {
        let mut points = parse(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(points.len(), 1, "{points:?}");
        points.remove(0)
    }

    fn field(p: &Point, key: &str) -> FieldValue {
        p.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no field {key} in {p:?}"))
    }

    fn err(input: &str) -> String {
        match parse(input.as_bytes()) {
            Ok(p) => panic!("{input:?} parsed: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn parses_a_line() {
        let p = one("cpu,host=A,region=west usage_system=64.2,n=3i 1590488773254420000");
        assert_eq!(p.measurement, "cpu");
        assert_eq!(p.tags, vec![(s("host"), s("A")), (s("region"), s("west"))]);
        assert_eq!(field(&p, "usage_system"), FieldValue::Float(64.2));
        assert_eq!(field(&p, "n"), FieldValue::Integer(3));
        assert_eq!(p.timestamp, Some(1_590_488_773_254_420_000));
        assert_eq!(p.origin, Origin::InfluxLine(1));
        // No tags, no timestamp, trailing spaces, CRLF.
        let p = one("  m f=1   \r\n");
        assert_eq!(p.measurement, "m");
        assert!(p.tags.is_empty());
        assert_eq!(p.timestamp, None);
        assert_eq!(one("m f=1 -5").timestamp, Some(-5));
        assert_eq!(one("m   f=1    7   ").timestamp, Some(7));
    }

    #[test]
    fn escaping_follows_the_spec() {
        // Measurement: comma and space.
        assert_eq!(
            one(r"my\,meas\ urement f=1 1").measurement,
            "my,meas urement"
        );
        // `=` needs no escape in a measurement, and `\=` there is literal.
        assert_eq!(one(r"a=b\=c f=1 1").measurement, r"a=b\=c");
        // Tag keys and values: comma, equals sign, space.
        let p = one(r"m,tag\ key\,1\=x=tag\ value\,2\=y f=1 1");
        assert_eq!(p.tags, vec![(s("tag key,1=x"), s("tag value,2=y"))]);
        // Field keys: the same.
        let p = one(r"m field\ key\,\=x=1 1");
        assert_eq!(field(&p, "field key,=x"), FieldValue::Float(1.0));
        // A backslash before anything else is literal; two then an escapable char keep one.
        let p = one(r"m,path=C:\Windows,two=a\\,x f=1 1");
        assert_eq!(
            p.tags,
            vec![(s("path"), s(r"C:\Windows")), (s("two"), s(r"a\,x"))]
        );
        // String fields: \" and \\; other backslashes stay; commas, spaces, = are plain.
        let p = one(r#"m s="a \"quoted\" \\ path\n, x=1 y",t="\\" 1"#);
        assert_eq!(
            field(&p, "s"),
            FieldValue::String(s(r#"a "quoted" \ path\n, x=1 y"#))
        );
        assert_eq!(field(&p, "t"), FieldValue::String(s(r"\")));
        // Unicode passes through.
        let p = one("m\u{e9},t=\u{1f600} f\u{e9}=1 1");
        assert_eq!(p.measurement, "m\u{e9}");
        assert_eq!(p.tags[0].1, "\u{1f600}");
    }

    #[test]
    fn field_types() {
        let p = one(
            "m a=1,b=-1.5,c=.5,d=1.,e=1e3,f=-2.5E-2,g=3i,h=-3i,i=3u,j=t,k=FALSE,l=True,m=\"x\",n=0 1",
        );
        let want = [
            ("a", FieldValue::Float(1.0)),
            ("b", FieldValue::Float(-1.5)),
            ("c", FieldValue::Float(0.5)),
            ("d", FieldValue::Float(1.0)),
            ("e", FieldValue::Float(1000.0)),
            ("f", FieldValue::Float(-0.025)),
            ("g", FieldValue::Integer(3)),
            ("h", FieldValue::Integer(-3)),
            ("i", FieldValue::Unsigned(3)),
            ("j", FieldValue::Boolean(true)),
            ("k", FieldValue::Boolean(false)),
            ("l", FieldValue::Boolean(true)),
            ("m", FieldValue::String(s("x"))),
            ("n", FieldValue::Float(0.0)),
        ];
        for (k, v) in want {
            assert_eq!(field(&p, k), v, "{k}");
        }
        let p = one("m i=9223372036854775807i,j=-9223372036854775808i,u=18446744073709551615u 1");
        assert_eq!(field(&p, "i"), FieldValue::Integer(i64::MAX));
        assert_eq!(field(&p, "j"), FieldValue::Integer(i64::MIN));
        assert_eq!(field(&p, "u"), FieldValue::Unsigned(u64::MAX));
        // Repeated keys: the later wins when mapped (both are kept here, in order).
        let p = one("m,t=1,t=2 f=1,f=2 1");
        assert_eq!(p.tags.len(), 2);
        assert_eq!(field(&p, "f"), FieldValue::Float(2.0));
    }

    #[test]
    fn invalid_values_say_why() {
        let cases = [
            ("m f=nan 1", "field `f`: invalid value `nan`"),
            ("m f=NaN 1", "invalid value `NaN`"),
            ("m f=inf 1", "there is no NaN or infinity"),
            ("m f=-Infinity 1", "invalid value `-Infinity`"),
            ("m f=+1 1", "invalid value `+1`"),
            ("m f=1.5i 1", "invalid value `1.5i`"),
            ("m f=-3u 1", "invalid value `-3u`"),
            ("m f=1e 1", "invalid value `1e`"),
            ("m f=. 1", "invalid value `.`"),
            ("m f=0x10 1", "invalid value `0x10`"),
            ("m f=yes 1", "invalid value `yes`"),
            (
                "m f=1e400 1",
                "field `f`: `1e400` is out of range for a 64-bit float",
            ),
            (
                "m f=9223372036854775808i 1",
                "out of range for a 64-bit integer",
            ),
            (
                "m f=18446744073709551616u 1",
                "out of range for a 64-bit unsigned integer",
            ),
        ];
        for (input, want) in cases {
            let got = err(input);
            assert!(got.starts_with("influx line 1: "), "{got}");
            assert!(got.contains(want), "{input}: got `{got}`, want `{want}`");
        }
    }

    #[test]
    fn malformed_lines_say_why() {
        let cases = [
            ("m", "influx line 1: no fields"),
            ("m,t=v", "no fields"),
            ("m,t=v   ", "no fields"),
            ("m f", "field `f` has no value"),
            ("m f=", "field `f` has no value"),
            ("m f=,g=1", "field `f` has no value"),
            ("m f=1,", "empty field key"),
            ("m =1", "empty field key"),
            (",t=v f=1", "empty measurement"),
            ("m,=v f=1", "empty tag key"),
            ("m,t f=1", "tag `t` has no value"),
            ("m,t= f=1", "tag `t` has no value"),
            ("m,t=a=b f=1", "tag `t`: unescaped `=`"),
            ("m\\", "measurement ends with a backslash"),
            ("m,t=v\\\nx f=1", "tag value ends with a backslash"),
            ("m\tx f=1", "control character '\\t' in measurement"),
            ("m,t=a\u{0}b f=1", "control character '\\0' in tag value"),
            ("m f=\"abc", "field `f`: unterminated quoted string"),
            ("m f=\"abc\\\"", "unterminated quoted string"),
            (
                "m f=\"a\"b 1",
                "field `f`: unexpected text after the quoted string",
            ),
            ("m f=1 12x", "invalid timestamp `12x`"),
            ("m f=1 1.5", "invalid timestamp `1.5`"),
            ("m f=1 99999999999999999999", "invalid timestamp"),
            ("m f=1 1 2", "unexpected `2` after the timestamp"),
            ("m f=1 1,2", "invalid timestamp `1,2`"),
        ];
        for (input, want) in cases {
            let got = err(input);
            assert!(got.contains(want), "{input:?}: got `{got}`, want `{want}`");
        }
        // Bytes that are not UTF-8 in a name; long values are clipped.
        assert!(
            parse(b"m\xff f=1 1")
                .unwrap_err()
                .to_string()
                .contains("a measurement is not UTF-8")
        );
        let long = format!("m f={} 1", "x".repeat(1000));
        assert!(err(&long).len() < 250);
    }

    #[test]
    fn multi_line_input_with_comments_and_blank_lines() {
        let input = "# a comment\n\
                     \n\
                     cpu,cpu=cpu0 usage_idle=90 1\r\n\
                     \x20\x20 # indented comment\n\
                     mem used=1i 2\n\
                     log msg=\"two\nlines\",n=1i 3\n\
                     disk used_percent=5 4";
        let points = parse(input.as_bytes()).unwrap();
        let got: Vec<(&str, Origin, Option<i64>)> = points
            .iter()
            .map(|p| (p.measurement.as_str(), p.origin, p.timestamp))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu", Origin::InfluxLine(3), Some(1)),
                ("mem", Origin::InfluxLine(5), Some(2)),
                ("log", Origin::InfluxLine(6), Some(3)),
                ("disk", Origin::InfluxLine(8), Some(4)),
            ]
        );
        assert_eq!(
            field(&points[2], "msg"),
            FieldValue::String(s("two\nlines"))
        );
        // Errors carry the line number and how many points came before.
        let e = parse(b"m f=1 1\n# c\nm f=1 1\nm f=\"x 1\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert_eq!(e.points_before, 2);
        assert_eq!(
            e.to_string(),
            "influx line 4: field `f`: unterminated quoted string"
        );
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(b"# only\n\n  \r\n").unwrap().is_empty());
    }

    #[test]
    fn is_float_follows_the_grammar() {
        for ok in [
            "0", "1", "-1", "1.", "1.5", ".5", "-.5", "1e5", "1E+5", "1.e-5", "00012",
        ] {
            assert!(is_float(ok), "{ok}");
        }
        for bad in [
            "", "-", ".", "e5", ".e5", "1e", "1e+", "+1", "1.2.3", "1e5.0", "--1", "nan",
        ] {
            assert!(!is_float(bad), "{bad}");
        }
    }
}
