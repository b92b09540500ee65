//! End to end: E2B egress rules (`e2b.network`, `--e2b-allow-internet`, `--e2b-allow-out`,
//! `--e2b-deny-out`) through create and `status --json`, against the emulator binary; the
//! refusal of a repository file that loosens them; the local provider refusing the flags.

mod common;

use common::*;

fn status_json(sb: &Sandbox, lease: &str) -> serde_json::Value {
    serde_json::from_str(&ok(sb.run(&[
        "status",
        "--provider",
        "e2b",
        "--id",
        lease,
        "--json",
    ])))
    .unwrap()
}

fn user_config(sb: &Sandbox, text: &str) {
    let dir = sb.config.join("crabbox");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

#[test]
fn network_flags_round_trip_through_create_and_status() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let lease = ok(sb.run(&[
        "warmup",
        "--provider",
        "e2b",
        "--e2b-allow-internet",
        "false",
        "--e2b-allow-out",
        "registry.npmjs.org",
        "--e2b-allow-out",
        "*.crates.io",
        "--e2b-deny-out",
        "10.0.0.0/8",
    ]))
    .trim()
    .to_string();
    let st = status_json(&sb, &lease);
    assert_eq!(
        st["network"],
        serde_json::json!({
            "allowInternet": false,
            "allowOut": ["registry.npmjs.org", "*.crates.io"],
            "denyOut": ["10.0.0.0/8"],
        }),
        "{st}"
    );
    // The box really has no way out: its network has only a loopback.
    let out = ok(sb.run(&[
        "run",
        "--provider",
        "e2b",
        "--id",
        &lease,
        "--shell",
        "--",
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    ]));
    assert_eq!(out, "lo\n");
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));

    // From YAML (the user's file) and with internet on by default.
    user_config(&sb, "e2b:\n  network:\n    denyOut: [192.168.0.0/16]\n");
    let lease = ok(sb.run(&["warmup", "--provider", "e2b"]))
        .trim()
        .to_string();
    let st = status_json(&sb, &lease);
    assert_eq!(st["network"]["allowInternet"], true, "{st}");
    assert_eq!(
        st["network"]["denyOut"],
        serde_json::json!(["192.168.0.0/16"])
    );
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

#[test]
fn a_repository_may_tighten_egress_but_not_loosen_it() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "e2b:\n  network:\n    allowInternet: false\n    allowOut: [registry.npmjs.org]\n",
    )
    .unwrap();
    let lease = ok(sb.run(&["warmup", "--provider", "e2b"]))
        .trim()
        .to_string();
    let st = status_json(&sb, &lease);
    assert_eq!(st["network"]["allowInternet"], false, "{st}");
    assert_eq!(
        st["network"]["allowOut"],
        serde_json::json!(["registry.npmjs.org"])
    );
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));

    // The user turns internet off; the repository turning it back on is refused by name,
    // before any sandbox exists.
    user_config(&sb, "e2b:\n  network:\n    allowInternet: false\n");
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "e2b:\n  network:\n    allowInternet: true\n",
    )
    .unwrap();
    let o = sb.run(&["run", "--provider", "e2b", "--", "true"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(".crabbox.yaml"), "{err}");
    assert!(err.contains("e2b.network.allowInternet"), "{err}");
    assert!(emu.sandbox_ids().is_empty(), "nothing was created");
    assert!(sb.claims().is_empty());
    // doctor says so too, as its own check.
    let o = sb.run(&["doctor", "--provider", "e2b", "--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "e2b.network")
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"].to_string().contains(".crabbox.yaml"),
        "{check}"
    );
    let workdir = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "workdir")
        .cloned()
        .unwrap();
    assert_eq!(workdir["status"], "pass", "{workdir}");
    // Adding a destination the user's rules do not allow is refused too ...
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "e2b:\n  network:\n    allowOut: [evil.example]\n",
    )
    .unwrap();
    let o = sb.run(&["warmup", "--provider", "e2b"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("evil.example"), "{}", stderr(&o));
    // ... unless the user's own flag allows it.
    let lease = ok(sb.run(&[
        "warmup",
        "--provider",
        "e2b",
        "--e2b-allow-out",
        "evil.example",
    ]))
    .trim()
    .to_string();
    let st = status_json(&sb, &lease);
    assert_eq!(st["network"]["allowInternet"], false, "{st}");
    assert_eq!(
        st["network"]["allowOut"],
        serde_json::json!(["evil.example"])
    );
    ok(sb.run(&["stop", "--provider", "e2b", &lease]));
}

#[test]
fn malformed_egress_entries_are_refused_before_any_sandbox() {
    let Some(emu) = Emulator::start() else {
        return;
    };
    let sb = emu.sandbox();
    let o = sb.run(&[
        "warmup",
        "--provider",
        "e2b",
        "--e2b-deny-out",
        "example.com",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--e2b-deny-out"), "{}", stderr(&o));
    assert!(emu.sandbox_ids().is_empty());
}

#[test]
fn the_local_provider_refuses_e2b_network_flags() {
    let sb = Sandbox::new();
    for args in [
        &["run", "--e2b-allow-internet", "false", "--", "true"][..],
        &["run", "--e2b-allow-out", "example.com", "--", "true"][..],
        &["warmup", "--e2b-deny-out", "10.0.0.0/8"][..],
    ] {
        let o = sb.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is a setting of provider e2b"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // The e2b section in a file is the e2b provider's business: local ignores it.
    std::fs::write(
        sb.root().join(".crabbox.yaml"),
        "e2b:\n  network:\n    allowInternet: false\n",
    )
    .unwrap();
    assert_eq!(ok(sb.run(&["run", "--", "echo", "hi"])), "hi\n");
}
