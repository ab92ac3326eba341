//! A configuration file (TOML), then its validation. Paths of certificate files are cleared before validation:
//! reading whatever file a fuzzed path names (/dev/zero) is not what is under test.
#![no_main]

use herald::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(settings) = toml::from_str::<Settings>(text) {
        let settings = Settings {
            rpc_tls_cert: None,
            rpc_tls_key: None,
            rpc_tls_ca: None,
            ..settings
        };
        let _ = settings.resolve();
    }
});
