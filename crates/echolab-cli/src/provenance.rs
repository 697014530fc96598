//! What every JSON document echolab writes carries about the run that wrote it: its schema
//! version, echolab's version and git revision, the command line, the CPU model and the
//! kernel. One function, [`stamp`], used by bench, `bench --udp`, compare and lab, so that
//! a figure found in a file years later can be traced to the build and machine behind it.

use serde_json::{json, Map, Value};

/// The version of the layout of echolab's JSON documents. Raise it when a field changes
/// meaning or goes away (adding a field does not).
pub const SCHEMA_VERSION: u32 = 1;

/// The git revision the binary was built from (`git rev-parse HEAD` at build time), or
/// "unknown" when it was built without git.
pub fn git_revision() -> &'static str {
    option_env!("ECHOLAB_GIT_REVISION").unwrap_or("unknown")
}

/// The CPU model as /proc/cpuinfo names it ("model name"), or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model_from(&text))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The first "model name" of a /proc/cpuinfo text (x86), else its "Hardware" or
/// "cpu model" line (some ARM and MIPS kernels).
fn cpu_model_from(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "cpu model"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.trim() == *key && !value.trim().is_empty()).then(|| value.trim().to_string())
            })
        })
}

/// The kernel: its name and release, as `uname -sr` prints them ("Linux 6.1.0"), or
/// "unknown".
pub fn kernel() -> String {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{file}"))
            .ok()
            .map(|text| text.trim().to_string())
    };
    match (read("ostype"), read("osrelease")) {
        (Some(name), Some(release)) => format!("{name} {release}"),
        _ => "unknown".to_string(),
    }
}

/// The provenance fields (serde_json writes an object's keys in sorted order).
pub fn fields() -> Map<String, Value> {
    let command_line: Vec<String> = std::env::args().collect();
    let mut map = Map::new();
    map.insert("schema_version".into(), json!(SCHEMA_VERSION));
    map.insert("echolab_version".into(), json!(env!("CARGO_PKG_VERSION")));
    map.insert("git_revision".into(), json!(git_revision()));
    map.insert("command_line".into(), json!(command_line));
    map.insert("cpu_model".into(), json!(cpu_model()));
    map.insert("kernel".into(), json!(kernel()));
    map
}

/// Adds the provenance fields to `doc`, a JSON object (a document that is not an object
/// is left as it is). A field of `doc` with the same name is replaced.
pub fn stamp(doc: &mut Value) {
    if let Value::Object(map) = doc {
        map.extend(fields());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_document_carries_every_field() {
        let mut doc = json!({ "rate": 5, "kernel": "mine" });
        stamp(&mut doc);
        let mut keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "command_line",
                "cpu_model",
                "echolab_version",
                "git_revision",
                "kernel",
                "rate",
                "schema_version",
            ]
        );
        assert_eq!(doc["schema_version"], json!(SCHEMA_VERSION));
        assert_eq!(doc["echolab_version"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(doc["rate"], json!(5));
        assert_ne!(doc["kernel"], json!("mine"));
        assert!(doc["command_line"]
            .as_array()
            .is_some_and(|a| !a.is_empty()));
        let mut not_an_object = json!([1]);
        stamp(&mut not_an_object);
        assert_eq!(not_an_object, json!([1]));
    }

    #[test]
    fn the_revision_is_git_s_or_unknown() {
        let rev = git_revision();
        // Built in a clone here: 40 hex digits. Built without git: "unknown".
        assert!(
            rev == "unknown" || rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "{rev}"
        );
    }

    #[test]
    fn cpu_and_kernel_come_from_proc() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model_from(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(
            cpu_model_from("Hardware\t: BCM2835\n").as_deref(),
            Some("BCM2835")
        );
        assert_eq!(cpu_model_from("model name\t:\n"), None);
        assert_eq!(cpu_model_from(""), None);
        // This machine's, as /proc/cpuinfo says it (known truth: read it here directly).
        match std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            }) {
            Some(model) => assert_eq!(cpu_model(), model),
            None => eprintln!("SKIPPED (cpu model): no \"model name\" in /proc/cpuinfo here"),
        }
        assert!(kernel().starts_with("Linux "), "{}", kernel());
    }
}
