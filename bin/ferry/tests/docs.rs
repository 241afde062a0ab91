//! `ferry completions` and `ferry man` print what shells and `man` read,
//! generated from the real command line (the real binary, no server).
#![allow(clippy::unwrap_used)]

mod common;

use common::ferry;

const SUBCOMMANDS: [&str; 8] = [
    "send",
    "receive",
    "serve",
    "relay",
    "nat",
    "completions",
    "man",
    "config",
];

/// Runs ferry with `args`; asserts it exited 0 and returns stdout.
fn stdout_of(args: &[&str]) -> String {
    let output = ferry().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn bash_completions_know_ferry_and_its_subcommands_and_options() {
    let script = stdout_of(&["completions", "bash"]);
    assert!(script.contains("complete -F _ferry"), "{script}");
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "no {sub} in the bash completions");
    }
    assert!(script.contains("--code-file") && script.contains("--qr"));
}

#[test]
fn every_shell_gets_a_script_naming_ferry() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains("ferry"), "{shell}: {script}");
        assert!(script.contains("receive"), "{shell}: no receive");
    }
    let wrong = ferry().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
}

#[test]
fn completions_help_says_where_to_install_the_script() {
    let help = stdout_of(&["completions", "--help"]);
    assert!(
        help.contains("ferry completions bash > ~/.local/share/bash-completion/completions/ferry"),
        "{help}"
    );
    let help = stdout_of(&["man", "--help"]);
    assert!(help.contains("~/.local/share/man/man1"), "{help}");
}

#[test]
fn man_prints_a_roff_page_with_the_subcommands() {
    let page = stdout_of(&["man"]);
    assert!(page.starts_with(".TH") || page.starts_with(".ie"), "{page}");
    assert!(page.contains("\n.TH ferry 1"), "{page}");
    assert!(page.contains("\n.SH NAME\n"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("ferry\\-{sub}")),
            "no {sub} in the page"
        );
    }
    assert!(page.contains("Exit codes"), "the exit codes are missing");
}

#[test]
fn man_dir_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("man1");
    stdout_of(&["man", "--dir", target.to_str().unwrap()]);
    for name in ["ferry".to_string()]
        .into_iter()
        .chain(SUBCOMMANDS.iter().map(|s| format!("ferry-{s}")))
    {
        let page = std::fs::read_to_string(target.join(format!("{name}.1"))).unwrap();
        assert!(page.contains(".SH NAME"), "{name}: {page}");
    }
    let send = std::fs::read_to_string(target.join("ferry-send.1")).unwrap();
    assert!(send.contains("\\-\\-code\\-file"), "{send}");
}

#[test]
fn version_names_the_protocols() {
    let output = ferry().arg("--version").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("ferry "), "{text}");
    for part in [
        "signalling protocol 1",
        "relay protocol 1",
        "transfer protocol 2",
        "move",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
}
