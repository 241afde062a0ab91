//! The servers' options from three places besides the command line:
//! every long option of `ferry serve` and `ferry relay` is also an
//! environment variable (`--relay-rate` is `FERRY_RELAY_RATE`) and a key
//! of the TOML file `--config FILE` names (`relay_rate = "64M"`, or
//! `relay-rate`). The command line wins, then the environment, then the
//! file, then the default. `--print-config` shows the result, and where
//! each value came from.
//!
//! The file is applied before clap parses: its keys become options
//! appended to the command line, except those the command line or the
//! environment already set. So every value passes the same parsers and
//! checks (ranges, conflicts) as a flag, and an unknown key is an error
//! that names it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The subcommands that take a config file.
const SERVERS: [&str; 2] = ["serve", "relay"];

/// Options that are no key of the file.
const NOT_KEYS: [&str; 4] = ["help", "version", "config", "print_config"];

/// The largest config file read.
const MAX_FILE: u64 = 1 << 20;

/// The environment variable of the option `id`.
pub fn env_name(id: &str) -> String {
    format!("FERRY_{}", id.to_ascii_uppercase())
}

/// ferry's command line: the clap definitions, with an environment
/// variable for every option of the servers.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    for name in SERVERS {
        command = command.mut_subcommand(name, |sub| {
            sub.mut_args(|arg| {
                let id = arg.get_id().as_str().to_string();
                if arg.get_long().is_none()
                    || arg.is_global_set()
                    || NOT_KEYS.contains(&id.as_str())
                {
                    return arg;
                }
                if arg.get_env().is_some() {
                    return arg;
                }
                arg.env(env_name(&id))
            })
        });
    }
    command
}

/// Parses the command line (`std::env::args_os`), applying a server's
/// config file or the client config file; `--print-config` prints and
/// exits. Errors exit as clap's do (code 2).
pub fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let env = |name: &str| std::env::var_os(name);
    let parsed = parse_from(argv, &env);
    match parsed {
        Ok(Parsed::Run(cli)) => *cli,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(error) => error.exit(),
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run this.
    Run(Box<Cli>),
    /// Print this effective config and exit.
    Print(String),
}

/// The environment, as `std::env::var_os` (tests pass their own; clap
/// itself reads the values of the options' variables).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// [`parse`] on `argv`.
pub fn parse_from(argv: Vec<OsString>, env: Env<'_>) -> Result<Parsed, clap::Error> {
    let mut argv = argv;
    let mut from_file = HashSet::new();
    let mut config = None;
    let sub = first_subcommand(&argv);
    let file = match sub.as_deref() {
        Some(sub) if SERVERS.contains(&sub) => option_value(&argv, "config")
            .or_else(|| env("FERRY_CONFIG"))
            .map(PathBuf::from),
        // The client file is read when it exists.
        Some(sub) if CLIENTS.contains(&sub) => client_file(env).filter(|f| f.exists()),
        _ => None,
    };
    if let (Some(sub), Some(file)) = (&sub, file) {
        for (id, arg) in file_options(&file, sub, &argv, env)? {
            from_file.insert(id);
            argv.push(arg.into());
        }
        config = Some(file);
    }
    let matches = command().try_get_matches_from(&argv).inspect_err(|error| {
        let shown = matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        );
        if let Some(file) = config.as_ref().filter(|_| !shown) {
            eprintln!(
                "note: the options of {} were applied as flags",
                file.display()
            );
        }
    })?;
    if let Some((name, sub)) = matches.subcommand()
        && SERVERS.contains(&name)
        && sub.get_flag("print_config")
    {
        return Ok(Parsed::Print(effective(
            name,
            sub,
            &from_file,
            config.as_deref(),
        )));
    }
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Parsed::Run(Box::new(cli)))
}

/// The subcommand `argv` runs, if any: the first argument that is not an
/// option.
fn first_subcommand(argv: &[OsString]) -> Option<String> {
    argv.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
        .map(str::to_string)
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` in `argv`.
fn option_value(argv: &[OsString], name: &str) -> Option<OsString> {
    let flag = format!("--{name}");
    let with = format!("--{name}=");
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            return args.next().cloned();
        }
        if let Some(value) = text.strip_prefix(&with) {
            return Some(value.into());
        }
    }
    None
}

/// Whether `argv` gives the option `--long` (or `-short`).
fn given(argv: &[OsString], long: &str, short: Option<char>) -> bool {
    let flag = format!("--{long}");
    let with = format!("--{long}=");
    argv.iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.starts_with(&with) || short.is_some_and(|s| a == format!("-{s}")))
}

/// The subcommands that read the client config file.
const CLIENTS: [&str; 3] = ["send", "receive", "nat"];

/// Options no config file sets: a code is for one transfer.
const NOT_CLIENT_KEYS: [&str; 3] = ["code", "code_file", "text"];

/// The client config file: `$XDG_CONFIG_HOME/ferry/config.toml`, else
/// `~/.config/ferry/config.toml` (the XDG base directory convention).
pub fn client_file(env: Env<'_>) -> Option<PathBuf> {
    let xdg = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("ferry").join("config.toml"))
}

/// The keys of subcommand `sub` in a config file: its long options, but
/// not global ones or those no file sets.
fn keys_of(sub: &clap::Command) -> Vec<&clap::Arg> {
    let client = CLIENTS.contains(&sub.get_name());
    sub.get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_global_set())
        .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()))
        .filter(|a| !(client && NOT_CLIENT_KEYS.contains(&a.get_id().as_str())))
        .collect()
}

/// The options `file` adds to `argv` for the subcommand `sub`: as
/// `(id, "--long=value")`, without those the command line or the
/// environment sets. A server's file holds the server's options; the
/// client file holds options of `send`, `receive` and `nat` at its top
/// (each applies where the command has it) and in `[send]`, `[receive]`
/// and `[nat]` tables (which win over the top).
fn file_options(
    file: &Path,
    sub: &str,
    argv: &[OsString],
    env: Env<'_>,
) -> Result<Vec<(String, String)>, clap::Error> {
    let fail = |why: String| {
        command().error(
            ErrorKind::ValueValidation,
            format!("the config file {}: {why}", file.display()),
        )
    };
    let text = read_bounded(file).map_err(&fail)?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(format!("not valid TOML: {}", e.to_string().trim_end()))
    })?;
    let command = command();
    let find = |name: &str| command.find_subcommand(name);
    let Some(subcommand) = find(sub) else {
        return Ok(Vec::new());
    };
    let unknown = |key: &str, of: &str, keys: &[&clap::Arg]| {
        let known: Vec<&str> = keys.iter().map(|a| a.get_id().as_str()).collect();
        fail(format!(
            "unknown key {}; the keys are the long options of `ferry {of}` (see `ferry {of} \
             --help`): {}",
            crate::escape::line(key),
            known.join(", ")
        ))
    };
    // (key, value) pairs for `sub`, the most specific first.
    let mut entries: Vec<(&str, &toml::Value)> = Vec::new();
    if SERVERS.contains(&sub) {
        let keys = keys_of(subcommand);
        for (key, value) in &table {
            if !keys
                .iter()
                .any(|a| a.get_id().as_str() == key.replace('-', "_"))
            {
                return Err(unknown(key, sub, &keys));
            }
            entries.push((key, value));
        }
    } else {
        let mut top = Vec::new();
        for (key, value) in &table {
            if let toml::Value::Table(section) = value {
                let Some(of) = CLIENTS
                    .iter()
                    .find(|c| **c == key.as_str())
                    .and_then(|c| find(c))
                else {
                    return Err(fail(format!(
                        "unknown table [{}]; the tables are [send], [receive] and [nat]",
                        crate::escape::line(key)
                    )));
                };
                let keys = keys_of(of);
                for (key, value) in section {
                    if !keys
                        .iter()
                        .any(|a| a.get_id().as_str() == key.replace('-', "_"))
                    {
                        return Err(unknown(key, of.get_name(), &keys));
                    }
                    if of.get_name() == sub {
                        entries.push((key, value));
                    }
                }
            } else {
                let anywhere = CLIENTS.iter().filter_map(|c| find(c)).any(|of| {
                    keys_of(of)
                        .iter()
                        .any(|a| a.get_id().as_str() == key.replace('-', "_"))
                });
                if !anywhere {
                    return Err(unknown(key, sub, &keys_of(subcommand)));
                }
                top.push((key.as_str(), value));
            }
        }
        entries.extend(top);
    }
    let keys = keys_of(subcommand);
    let mut options: Vec<(String, String)> = Vec::new();
    for (key, value) in entries {
        let id = key.replace('-', "_");
        // A top-level key another command has; or one a table set already.
        let Some(arg) = keys.iter().find(|a| a.get_id().as_str() == id) else {
            continue;
        };
        if options.iter().any(|(done, _)| *done == id) {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        let from_env = arg
            .get_env()
            .and_then(|name| name.to_str())
            .is_some_and(|name| env(name).is_some());
        if given(argv, long, arg.get_short()) || from_env {
            continue;
        }
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let text = match value {
            toml::Value::Boolean(true) if flag => {
                options.push((id, format!("--{long}")));
                continue;
            }
            toml::Value::Boolean(false) if flag => continue,
            _ if flag => {
                return Err(fail(format!("{key} takes true or false")));
            }
            toml::Value::String(s) => match (s.strip_prefix("~/"), env("HOME")) {
                // A path in the home folder, as a shell would expand it.
                (Some(rest), Some(home)) => PathBuf::from(home).join(rest).display().to_string(),
                _ => s.clone(),
            },
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(fail(format!(
                    "{key} takes a string or a number, as --{long} does"
                )));
            }
        };
        options.push((id, format!("--{long}={text}")));
    }
    Ok(options)
}

/// `ferry config`: where the config files are read from, and what the
/// client file sets.
pub fn show(out: &crate::output::Output) -> anyhow::Result<()> {
    use serde_json::json;
    let env = |name: &str| std::env::var_os(name);
    let client = client_file(&env);
    let exists = client.as_ref().is_some_and(|f| f.exists());
    let text = match client.as_ref().filter(|_| exists) {
        Some(file) => Some(read_bounded(file).map_err(|why| {
            crate::exit::Failure::usage(format!("the config file {}: {why}", file.display()))
        })?),
        None => None,
    };
    let server_file = env("FERRY_CONFIG").map(|f| PathBuf::from(f).display().to_string());
    out.event(
        "config",
        json!({
            "client_file": client.as_ref().map(|f| f.display().to_string()),
            "client_file_exists": exists,
            "client_config": text,
            "server_file": server_file,
        }),
    );
    match (&client, exists) {
        (Some(file), true) => out.say(format!(
            "Client config (send, receive, nat): {}, which holds:",
            file.display()
        )),
        (Some(file), false) => out.say(format!(
            "Client config (send, receive, nat): {} (not there; create it to set defaults, \
             e.g. server = \"ferry.example.org:443\" and [receive] out = \"~/Downloads\")",
            file.display()
        )),
        (None, _) => out.say("Client config: none (neither XDG_CONFIG_HOME nor HOME is set)"),
    }
    if let Some(text) = &text {
        for line in text.lines() {
            out.say(format!("  {}", crate::escape::line(line)));
        }
    }
    out.say(match &server_file {
        Some(file) => format!(
            "Server config (serve, relay): {file}, from FERRY_CONFIG; `ferry serve \
             --print-config` shows the effective options"
        ),
        None => "Server config (serve, relay): none by default; pass --config FILE (or set \
                 FERRY_CONFIG), and `ferry serve --print-config` shows the effective options"
            .to_string(),
    });
    Ok(())
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    let read =
        std::fs::File::open(file).and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text));
    match read {
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(n) if n as u64 > MAX_FILE => Err(format!("larger than {} KiB", MAX_FILE / 1024)),
        Ok(_) => Ok(text),
    }
}

/// The effective options of `sub` as TOML, each with where it came from.
fn effective(
    name: &str,
    sub: &clap::ArgMatches,
    from_file: &HashSet<String>,
    file: Option<&Path>,
) -> String {
    use clap::parser::ValueSource;
    let command = command();
    let mut text = format!("# ferry {name}: the effective options\n");
    let Some(subcommand) = command.find_subcommand(name) else {
        return text;
    };
    for arg in subcommand.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() || arg.is_global_set() || NOT_KEYS.contains(&id) {
            continue;
        }
        let source = match sub.value_source(id) {
            _ if from_file.contains(id) => match file {
                Some(file) => format!("config file {}", file.display()),
                None => "config file".into(),
            },
            Some(ValueSource::CommandLine) => "command line".into(),
            Some(ValueSource::EnvVariable) => format!("environment {}", env_name(id)),
            Some(ValueSource::DefaultValue) => "default".into(),
            _ => "not set".into(),
        };
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            Some(sub.get_flag(id).to_string())
        } else {
            sub.get_raw(id)
                .and_then(|mut values| values.next())
                .map(|raw| toml_value(&raw.to_string_lossy()))
        };
        match value {
            Some(value) => text.push_str(&format!("{id} = {value}  # {source}\n")),
            None => text.push_str(&format!("# {id} =  # {source}\n")),
        }
    }
    text
}

/// `raw` as a TOML value: a whole number bare, anything else a string.
fn toml_value(raw: &str) -> String {
    match raw.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml::Value::String(raw.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("ferry")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn serve(args: &[&str], env: Env<'_>) -> crate::cli::ServeArgs {
        match parse_from(argv(args), env).unwrap() {
            Parsed::Run(cli) => match cli.command {
                Command::Serve(args) => *args,
                other => panic!("{other:?}"),
            },
            Parsed::Print(text) => panic!("{text}"),
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let (_dir, path) = file(
            "listen = \"127.0.0.1:8443\"\nnameplate-ttl = 60\nno_relay = true\nrelay_rate = \"1M\"\n",
        );
        let args = serve(&["serve", "--config", &path], &no_env);
        assert_eq!(args.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(args.nameplate_ttl, 60);
        assert!(args.no_relay);
        assert_eq!(args.relay.relay_rate, Some(1024 * 1024));
        // The command line wins, and so does the environment (clap reads
        // its value; here it is only said to be set, so the default shows).
        let args = serve(&["serve", "--config", &path, "--nameplate-ttl=5"], &no_env);
        assert_eq!(args.nameplate_ttl, 5);
        let env = |name: &str| (name == "FERRY_LISTEN").then(|| OsString::from("unused"));
        let args = serve(&["serve", "--config", &path], &env);
        assert_eq!(args.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(args.nameplate_ttl, 60);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_say_which() {
        let (_dir, path) = file("listen = \"127.0.0.1:1\"\nlisten_address = 3\n");
        let error = parse_from(argv(&["serve", "--config", &path]), &no_env).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("unknown key listen_address"), "{text}");
        assert!(text.contains("nameplate_ttl"), "lists the keys: {text}");
        assert_eq!(error.exit_code(), 2);
        let (_dir, path) = file("no_relay = 1\n");
        let text = parse_from(argv(&["serve", "--config", &path]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(text.contains("no_relay takes true or false"), "{text}");
        let (_dir, path) = file("nameplate_ttl = \"soon\"\n");
        let text = parse_from(argv(&["serve", "--config", &path]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("--nameplate-ttl"),
            "clap names the option: {text}"
        );
        let (_dir, path) = file("listen = [\n");
        let text = parse_from(argv(&["serve", "--config", &path]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(text.contains("not valid TOML"), "{text}");
        let text = parse_from(
            argv(&["serve", "--config", "/nonexistent/ferry.toml"]),
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(text.contains("cannot read it"), "{text}");
    }

    #[test]
    fn a_required_option_may_come_from_the_file() {
        let (_dir, path) = file("relay_secret_file = \"/etc/ferry/relay.secret\"\n");
        let parsed = parse_from(argv(&["relay", "--config", &path]), &no_env).unwrap();
        let Parsed::Run(cli) = parsed else { panic!() };
        let Command::Relay(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            args.relay_secret_file,
            PathBuf::from("/etc/ferry/relay.secret")
        );
    }

    #[test]
    fn print_config_says_where_each_value_came_from() {
        let (_dir, path) = file("nameplate_ttl = 60\n");
        let parsed = parse_from(
            argv(&[
                "serve",
                "--config",
                &path,
                "--listen",
                "127.0.0.1:9",
                "--print-config",
            ]),
            &no_env,
        )
        .unwrap();
        let Parsed::Print(text) = parsed else {
            panic!()
        };
        assert!(
            text.contains("listen = \"127.0.0.1:9\"  # command line"),
            "{text}"
        );
        assert!(
            text.contains(&format!("nameplate_ttl = 60  # config file {path}")),
            "{text}"
        );
        assert!(text.contains("max_connections = 1024  # default"), "{text}");
        assert!(text.contains("no_relay = false  # default"), "{text}");
        assert!(text.contains("# relay_url =  # not set"), "{text}");
        // What it prints is a config file that gives the same options.
        let lines: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
            .collect();
        let table: toml::Table = lines.parse().unwrap();
        assert_eq!(table["nameplate_ttl"].as_integer(), Some(60));
    }

    /// The client file `text` in a config folder, and an environment
    /// that points there (HOME is /home/u).
    fn client(text: &str) -> (tempfile::TempDir, impl Fn(&str) -> Option<OsString>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ferry")).unwrap();
        std::fs::write(dir.path().join("ferry/config.toml"), text).unwrap();
        let base = dir.path().as_os_str().to_owned();
        let env = move |name: &str| match name {
            "XDG_CONFIG_HOME" => Some(base.clone()),
            "HOME" => Some("/home/u".into()),
            _ => None,
        };
        (dir, env)
    }

    fn run(args: &[&str], env: Env<'_>) -> Result<Command, clap::Error> {
        match parse_from(argv(args), env)? {
            Parsed::Run(cli) => Ok(cli.command),
            Parsed::Print(text) => panic!("{text}"),
        }
    }

    #[test]
    fn the_client_file_sets_defaults_for_send_receive_and_nat() {
        let (_dir, env) = client(
            "server = \"ferry.example.org:8443\"\nretries = 2\n\
             [receive]\nout = \"~/Downloads\"\nretries = 7\n[send]\nno_upnp = true\n",
        );
        let Command::Receive(args) = run(&["receive"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(
            args.server.server.as_deref(),
            Some("ferry.example.org:8443")
        );
        assert_eq!(args.out, PathBuf::from("/home/u/Downloads"), "~ expanded");
        assert_eq!(args.path.retries, 7, "the table wins over the top");
        let Command::Send(args) = run(&["send", "f"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(args.path.retries, 2);
        assert!(args.path.no_upnp);
        let Command::Nat(args) = run(&["nat"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(
            args.server.server.as_deref(),
            Some("ferry.example.org:8443")
        );
        // The command line wins.
        let Command::Receive(args) = run(&["receive", "--server", "a:1", "-o", "x"], &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(args.server.server.as_deref(), Some("a:1"));
        assert_eq!(args.out, PathBuf::from("x"));
        // No file, no change.
        let Command::Receive(args) = run(&["receive"], &no_env).unwrap() else {
            panic!()
        };
        assert_eq!(args.server.server, None);
    }

    #[test]
    fn the_client_file_sets_the_proxy_and_the_command_line_wins() {
        let (_dir, env) =
            client("proxy = \"socks5h://proxy.example:1080\"\n[nat]\nproxy = \"none\"\n");
        let Command::Send(args) = run(&["send", "f"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(
            args.server.proxy.as_deref(),
            Some("socks5h://proxy.example:1080")
        );
        let Command::Nat(args) = run(&["nat"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(args.server.proxy.as_deref(), Some("none"));
        let Command::Receive(args) =
            run(&["receive", "--proxy", "http://other:3128"], &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(args.server.proxy.as_deref(), Some("http://other:3128"));
    }

    #[test]
    fn the_client_file_refuses_unknown_keys_tables_and_codes() {
        for (text, says) in [
            ("servr = \"a:1\"\n", "unknown key servr"),
            ("[recieve]\nout = \"x\"\n", "unknown table [recieve]"),
            ("[receive]\nlimit_rate = \"1M\"\n", "unknown key limit_rate"),
            ("code = \"7-orbit-lantern\"\n", "unknown key code"),
        ] {
            let (_dir, env) = client(text);
            let error = run(&["receive"], &env).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn every_server_option_has_its_environment_variable() {
        let command = command();
        let serve = command.find_subcommand("serve").unwrap();
        let env = |id: &str| {
            serve
                .get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("relay_rate").as_deref(), Some("FERRY_RELAY_RATE"));
        assert_eq!(env("listen").as_deref(), Some("FERRY_LISTEN"));
        assert_eq!(env("config").as_deref(), Some("FERRY_CONFIG"));
        assert_eq!(env("print_config"), None);
        assert_eq!(env("tls_cert").as_deref(), Some("FERRY_TLS_CERT"));
        assert_eq!(env("tls_key").as_deref(), Some("FERRY_TLS_KEY"));
        assert_eq!(env("relay_sha256").as_deref(), Some("FERRY_RELAY_SHA256"));
        let relay = command.find_subcommand("relay").unwrap();
        assert!(
            relay
                .get_arguments()
                .any(|a| a.get_env().is_some_and(|e| e == "FERRY_TLS_CERT"))
        );
        command.clone().debug_assert();
    }

    #[test]
    fn the_tls_keys_round_trip_through_both_files() {
        let (_dir, path) =
            file("tls_cert = \"/etc/ferry/fullchain.pem\"\ntls-key = \"/etc/ferry/privkey.pem\"\n");
        let args = serve(&["serve", "--config", &path], &no_env);
        assert_eq!(args.tls.tls_cert, Some("/etc/ferry/fullchain.pem".into()));
        assert_eq!(args.tls.tls_key, Some("/etc/ferry/privkey.pem".into()));
        let (_dir, path) = file("tls_cert = \"/etc/ferry/fullchain.pem\"\n");
        let error = parse_from(argv(&["serve", "--config", &path]), &no_env).unwrap_err();
        assert!(error.to_string().contains("--tls-key"), "{error}");
        let pin = "ab".repeat(32);
        let text = format!(
            "server = \"h:1\"\nserver_sha256 = \"{pin}\"\n[receive]\ntls_ca = \"/etc/ca.pem\"\n"
        );
        let (_dir, env) = client(&text);
        let Command::Send(args) = run(&["send", "f"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(args.server.server_sha256.as_deref(), Some(pin.as_str()));
        let Command::Receive(args) = run(&["receive"], &env).unwrap() else {
            panic!()
        };
        assert_eq!(args.server.tls_ca, Some("/etc/ca.pem".into()));
        let (_dir, env) = client("tls = true\n");
        let Command::Nat(args) = run(&["nat"], &env).unwrap() else {
            panic!()
        };
        assert!(args.server.tls);
    }
}
