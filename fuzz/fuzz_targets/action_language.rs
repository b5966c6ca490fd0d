//! The Tabletop action language's parser on arbitrary bytes: it never panics, its errors
//! point inside the text, a parsed program reads back from its canonical spelling, and the
//! prefix checks used by constrained decoding never panic either.

#![no_main]

use dreamgym_envs::builtin::tabletop::command::{
    format_program, is_complete_program, is_viable_prefix, parse_bytes, parse_program,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_bytes(data) {
        Ok(program) => {
            let canonical = format_program(&program);
            assert_eq!(parse_program(&canonical).ok(), Some(program), "{canonical:?}");
            assert!(is_viable_prefix(&text));
        }
        Err(e) => assert!(e.position <= text.chars().count().max(4096), "{e}"),
    }
    let _ = is_complete_program(&text);
});
