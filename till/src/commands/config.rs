//! `till config`: the effective settings, each by its variable, passwords redacted.

use till::settings::SystemConfig;

pub fn run(config: &SystemConfig) {
    for (variable, value) in config.effective() {
        println!("{variable:<28} {value}");
    }
}
