//! Which layer may set which egress rule.

use super::*;
use crabbox_core::config::{FlagValue, LoadOptions};

struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, &'static str)>,
    flags: Vec<FlagValue>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("repo")).unwrap();
    Setup {
        dir,
        env: vec![],
        flags: vec![],
    }
}

impl Setup {
    fn user(self, text: &str) -> Self {
        std::fs::write(self.dir.path().join("user.yaml"), text).unwrap();
        self
    }
    fn repo(self, text: &str) -> Self {
        std::fs::write(self.dir.path().join("repo/.crabbox.yaml"), text).unwrap();
        self
    }
    fn flag(mut self, key: &'static str, flag: &str, value: Vec<&str>) -> Self {
        let value: Vec<String> = value.into_iter().map(String::from).collect();
        self.flags.push(FlagValue::new(key, flag, value));
        self
    }
    fn rules(&self) -> Result<NetworkSettings, String> {
        let cfg = LoadedConfig::load(&LoadOptions {
            cwd: self.dir.path().join("repo"),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: self.flags.clone(),
            user_file: Some(self.dir.path().join("user.yaml")),
            sections: vec![crate::SECTION],
        })
        .unwrap();
        let settings: crate::E2bSettings = cfg.section("e2b").unwrap();
        rules(&cfg, &settings.network)
    }
}

#[test]
fn defaults_leave_internet_on_and_send_nothing() {
    let rules = setup().rules().unwrap();
    assert_eq!(rules, NetworkSettings::default());
    assert_eq!(rules.create_fields(), (None, None));
}

#[test]
fn a_repository_may_tighten_the_rules() {
    let rules = setup()
        .repo("e2b:\n  network:\n    allowInternet: false\n    allowOut: [registry.npmjs.org]\n")
        .rules()
        .unwrap();
    assert!(!rules.allow_internet);
    let (internet, network) = rules.create_fields();
    assert_eq!(internet, Some(false));
    assert_eq!(
        network.unwrap(),
        serde_json::json!({"allowOut": ["registry.npmjs.org"]})
    );
    // Under a user's deny-by-default, a repository may narrow the user's allow list.
    setup()
        .user("e2b:\n  network:\n    allowInternet: false\n    allowOut: [a.com, b.com]\n")
        .repo("e2b:\n  network:\n    allowOut: [a.com]\n    denyOut: [10.0.0.0/8]\n")
        .rules()
        .unwrap();
}

#[test]
fn a_repository_turning_internet_on_is_refused_naming_the_file() {
    let s = setup()
        .user("e2b:\n  network:\n    allowInternet: false\n")
        .repo("e2b:\n  network:\n    allowInternet: true\n");
    let err = s.rules().unwrap_err();
    assert!(err.contains(".crabbox.yaml"), "{err}");
    assert!(err.contains("allowInternet"), "{err}");
    assert!(err.contains("--e2b-allow-internet"), "{err}");
}

#[test]
fn a_repository_adding_allow_out_or_dropping_a_denial_is_refused() {
    let err = setup()
        .user("e2b:\n  network:\n    allowInternet: false\n    allowOut: [a.com]\n")
        .repo("e2b:\n  network:\n    allowOut: [a.com, evil.example]\n")
        .rules()
        .unwrap_err();
    assert!(err.contains("evil.example"), "{err}");
    let err = setup()
        .user("e2b:\n  network:\n    denyOut: [10.0.0.0/8, 192.168.0.0/16]\n")
        .repo("e2b:\n  network:\n    denyOut: [10.0.0.0/8]\n")
        .rules()
        .unwrap_err();
    assert!(err.contains("192.168.0.0/16"), "{err}");
}

#[test]
fn the_users_flags_and_environment_allow_what_a_repository_may_not() {
    let s = setup()
        .user("e2b:\n  network:\n    allowInternet: false\n")
        .repo("e2b:\n  network:\n    allowInternet: true\n")
        .flag(ALLOW_OUT, "--e2b-allow-out", vec!["x.com"]);
    assert!(
        s.rules().is_err(),
        "a flag on another key does not allow it"
    );
    // The environment turns internet on with no denials: nothing is left to loosen.
    let mut s = setup()
        .user("e2b:\n  network:\n    allowInternet: false\n")
        .repo("e2b:\n  network:\n    allowInternet: true\n    allowOut: [x.com]\n");
    s.env = vec![("CRABBOX_E2B_ALLOW_INTERNET", "true")];
    assert!(s.rules().unwrap().allow_internet);
    // Internet off: the repository's extra destination is refused until a flag lists it.
    let s = setup()
        .user("e2b:\n  network:\n    allowInternet: false\n")
        .repo("e2b:\n  network:\n    allowOut: [x.com]\n");
    assert!(s.rules().unwrap_err().contains("x.com"));
    let rules = s
        .flag(ALLOW_OUT, "--e2b-allow-out", vec!["x.com", "y.com"])
        .rules()
        .unwrap();
    assert!(!rules.allow_internet);
    assert_eq!(rules.allow_out, ["x.com", "y.com"]);
}

#[test]
fn malformed_entries_are_refused_with_their_origin() {
    let err = setup()
        .user("e2b:\n  network:\n    denyOut: [example.com]\n")
        .rules()
        .unwrap_err();
    assert!(err.contains("user config"), "{err}");
    assert!(err.contains("example.com"), "{err}");
    let mut s = setup();
    s.env = vec![("CRABBOX_E2B_ALLOW_OUT", "ok.com, not a host")];
    let err = s.rules().unwrap_err();
    assert!(err.contains("CRABBOX_E2B_ALLOW_OUT"), "{err}");
}
