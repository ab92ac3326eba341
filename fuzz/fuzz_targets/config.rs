//! A configuration file (TOML), then every setting in it resolved over the defaults and validated, as the modes
//! do. Texts that name certificate files are skipped: reading whatever file a fuzzed path names (/dev/zero) is not
//! what is under test.
#![no_main]

use herald::config::SettingsFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if text.contains("rpc_tls") {
        return;
    }
    if let Ok(file) = SettingsFile::parse(text.to_owned(), "fuzz".to_owned()) {
        let _ = file.check();
    }
});
