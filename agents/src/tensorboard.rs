//! TensorBoard event files for scalar metrics, encoded by hand (no protobuf code generation,
//! no dependencies).
//!
//! An event file is a TFRecord stream: each record is
//! `u64 LE length | masked CRC-32C of those 8 bytes | data | masked CRC-32C of data`,
//! where `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping). Each record's data
//! is a serialized `tensorflow.Event`:
//!
//! ```text
//! message Event   { double wall_time = 1; int64 step = 2;
//!                   oneof what { string file_version = 3; Summary summary = 5; } }
//! message Summary { repeated Value value = 1; }
//! message Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! The first record carries `file_version = "brain.Event:2"`, which also tells TensorBoard not
//! to discard points whose step goes backwards. This module only builds bytes: the caller
//! writes them (atomically) under the run's log directory.

/// One scalar point.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The series name, e.g. `"train_v/loss"` (TensorBoard groups by the part before `/`).
    pub tag: String,
    /// The x coordinate TensorBoard plots against.
    pub step: i64,
    /// The value (TensorBoard stores scalars as 32-bit floats).
    pub value: f32,
    /// Seconds since the Unix epoch when the value was recorded.
    pub wall_time: f64,
}

/// The event-file format version written in the first record.
const FILE_VERSION: &str = "brain.Event:2";

/// The bytes of a complete event file holding `scalars` in order (first record: file_version).
pub fn event_file_bytes(scalars: &[Scalar], start_wall_time: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + scalars.len() * 64);
    let mut event = Vec::new();
    encode_event(&mut event, start_wall_time, 0, |e| {
        put_bytes_field(e, 3, FILE_VERSION.as_bytes())
    });
    put_record(&mut out, &event);
    for s in scalars {
        event.clear();
        encode_event(&mut event, s.wall_time, s.step, |e| {
            let mut value = Vec::with_capacity(s.tag.len() + 8);
            put_bytes_field(&mut value, 1, s.tag.as_bytes());
            put_key(&mut value, 2, WIRE_FIXED32);
            value.extend_from_slice(&s.value.to_le_bytes());
            let mut summary = Vec::with_capacity(value.len() + 4);
            put_bytes_field(&mut summary, 1, &value);
            put_bytes_field(e, 5, &summary);
        });
        put_record(&mut out, &event);
    }
    out
}

/// The conventional file name: `events.out.tfevents.{secs}.{host}` (host: "dreamgym" — no
/// hostname lookup, keep it deterministic).
pub fn event_file_name(start_wall_time: f64) -> String {
    // Whole seconds, as TensorFlow writes them; a time before 1970 or not a number gives 0.
    let secs = if start_wall_time.is_finite() && start_wall_time > 0.0 {
        start_wall_time.floor() as u64
    } else {
        0
    };
    format!("events.out.tfevents.{secs}.dreamgym")
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with `wall_time` and `step` set, then the fields `what` adds.
fn encode_event(out: &mut Vec<u8>, wall_time: f64, step: i64, what: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, 1, WIRE_FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(out, 2, WIRE_VARINT);
        // int64 is encoded as its two's complement bits (negative steps take 10 bytes).
        put_varint(out, step as u64);
    }
    what(out);
}

/// Appends one TFRecord around `data`.
fn put_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits plus a constant.
fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one table lookup per byte.
fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            k += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a TFRecord stream into its records' data, checking every length and CRC.
    fn records(mut bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len_bytes = &bytes[..8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(len_bytes), "length crc");
            let data = &bytes[12..12 + len];
            let data_crc = u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data), "data crc");
            out.push(data);
            bytes = &bytes[16 + len..];
        }
        out
    }

    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }

    /// A protobuf field's value.
    #[derive(Debug, PartialEq)]
    enum Field<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Bytes(&'a [u8]),
        Fixed32([u8; 4]),
    }

    fn fields(mut b: &[u8]) -> Vec<(u64, Field<'_>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut b)),
                1 => {
                    let v = b[..8].try_into().unwrap();
                    b = &b[8..];
                    Field::Fixed64(v)
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let v = &b[..n];
                    b = &b[n..];
                    Field::Bytes(v)
                }
                5 => {
                    let v = b[..4].try_into().unwrap();
                    b = &b[4..];
                    Field::Fixed32(v)
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    /// (wall_time, step, tag, value) of a scalar event.
    fn decode_scalar(event: &[u8]) -> (f64, i64, String, f32) {
        let (mut wall, mut step, mut tag, mut value) = (0.0, 0, String::new(), f32::NAN);
        for (num, f) in fields(event) {
            match (num, f) {
                (1, Field::Fixed64(b)) => wall = f64::from_le_bytes(b),
                (2, Field::Varint(v)) => step = v as i64,
                (5, Field::Bytes(summary)) => {
                    let vals = fields(summary);
                    assert_eq!(vals.len(), 1);
                    let Field::Bytes(val) = vals[0].1 else {
                        panic!("summary.value")
                    };
                    for (n, f) in fields(val) {
                        match (n, f) {
                            (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).unwrap(),
                            (2, Field::Fixed32(b)) => value = f32::from_le_bytes(b),
                            other => panic!("unexpected Value field {other:?}"),
                        }
                    }
                }
                other => panic!("unexpected Event field {other:?}"),
            }
        }
        (wall, step, tag, value)
    }

    #[test]
    fn crc32c_matches_known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // Masked values as TensorBoard's own reader computes them
        // (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c).
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
    }

    #[test]
    fn framing_parses_back_and_records_decode() {
        let scalars = vec![
            Scalar {
                tag: "train_v/loss".into(),
                step: 0,
                value: 1.25,
                wall_time: 1_700_000_001.5,
            },
            Scalar {
                tag: "train_v/kl".into(),
                step: 300,
                value: -0.001,
                wall_time: 1_700_000_002.0,
            },
            Scalar {
                tag: "odd/negative step".into(),
                step: -7,
                value: f32::INFINITY,
                wall_time: 0.0,
            },
        ];
        let bytes = event_file_bytes(&scalars, 1_700_000_000.25);
        let recs = records(&bytes);
        assert_eq!(recs.len(), 1 + scalars.len());
        // First record: wall time and file version, nothing else.
        let first = fields(recs[0]);
        assert_eq!(
            first,
            vec![
                (1, Field::Fixed64(1_700_000_000.25f64.to_le_bytes())),
                (3, Field::Bytes(b"brain.Event:2"))
            ]
        );
        for (rec, s) in recs[1..].iter().zip(&scalars) {
            let (wall, step, tag, value) = decode_scalar(rec);
            assert_eq!(
                (wall, step, tag.as_str()),
                (s.wall_time, s.step, s.tag.as_str())
            );
            assert_eq!(value.to_bits(), s.value.to_bits());
        }
    }

    #[test]
    fn empty_file_has_only_the_version_record_and_is_deterministic() {
        let a = event_file_bytes(&[], 12.0);
        assert_eq!(records(&a).len(), 1);
        assert_eq!(a, event_file_bytes(&[], 12.0));
    }

    #[test]
    fn file_name_is_conventional() {
        assert_eq!(
            event_file_name(1_700_000_000.9),
            "events.out.tfevents.1700000000.dreamgym"
        );
        assert_eq!(event_file_name(f64::NAN), "events.out.tfevents.0.dreamgym");
        assert_eq!(event_file_name(-5.0), "events.out.tfevents.0.dreamgym");
    }
}
