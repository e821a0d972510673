//! The real binary's command line: `--help` shows where secrets come from, never their values.

use std::process::Command;

#[test]
fn help_with_secrets_in_the_environment_does_not_print_them() {
    for subcommand in ["serve", "collector", "query", "migrate"] {
        let output = Command::new(env!("CARGO_BIN_EXE_tracepost"))
            .args([subcommand, "--help"])
            .env(
                "TRACEPOST_DATABASE_URL",
                "postgres://tracepost:db-hunter2@db.internal/tracepost",
            )
            .env(
                "TRACEPOST_METRICS_PUSH_URL",
                "http://vm:push-hunter2@vm.internal/api/v1/import",
            )
            .env("TRACEPOST_METRICS_QUERY_URL", "http://vm:query-hunter2@vm.internal/")
            .output()
            .expect("run tracepost --help");
        assert!(output.status.success(), "{subcommand} --help exits 0");
        let help = String::from_utf8(output.stdout).expect("utf-8 help");
        assert!(
            help.contains("TRACEPOST_DATABASE_URL"),
            "{subcommand} --help names the variable:\n{help}"
        );
        assert!(
            !help.contains("hunter2"),
            "{subcommand} --help prints a secret:\n{help}"
        );
    }
}

#[test]
fn help_lists_the_listener_flags_with_their_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_tracepost"))
        .args(["serve", "--help"])
        .output()
        .expect("run tracepost serve --help");
    let help = String::from_utf8(output.stdout).expect("utf-8 help");
    for (flag, variable) in [
        ("--max-connections", "TRACEPOST_MAX_CONNECTIONS"),
        ("--header-read-timeout", "TRACEPOST_HEADER_READ_TIMEOUT"),
        ("--idle-timeout", "TRACEPOST_IDLE_TIMEOUT"),
        ("--query-request-timeout", "TRACEPOST_QUERY_REQUEST_TIMEOUT"),
        ("--otlp-tls-cert-file", "TRACEPOST_OTLP_TLS_CERT_FILE"),
        ("--otlp-tls-key-file", "TRACEPOST_OTLP_TLS_KEY_FILE"),
        ("--query-tls-cert-file", "TRACEPOST_QUERY_TLS_CERT_FILE"),
        ("--query-tls-key-file", "TRACEPOST_QUERY_TLS_KEY_FILE"),
        ("--otlp-auth-tokens-file", "TRACEPOST_OTLP_AUTH_TOKENS_FILE"),
        ("--query-auth-tokens-file", "TRACEPOST_QUERY_AUTH_TOKENS_FILE"),
        ("--query-basic-auth-file", "TRACEPOST_QUERY_BASIC_AUTH_FILE"),
    ] {
        assert!(help.contains(flag), "{flag} is in serve --help");
        assert!(help.contains(&format!("[env: {variable}")), "{flag} names {variable}");
    }
}

#[test]
fn a_certificate_without_its_key_is_refused_on_the_command_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_tracepost"))
        .args(["serve", "--query-tls-cert-file", "/nonexistent/cert.pem"])
        .output()
        .expect("run tracepost serve");
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--query-tls-key-file"), "{stderr}");
}

/// The report: `--retention 213503982334602d` overflowed to 17 hours and dropped yesterday's spans. Durations and
/// sizes out of range are usage errors now, before anything starts.
#[test]
fn durations_and_sizes_out_of_range_are_refused_on_the_command_line() {
    for (flag, value, says) in [
        ("--retention", "213503982334602d", "out of range"),
        ("--retention", "12h", "at least 1d"),
        ("--export-timeout", "0s", "out of range"),
        ("--writers", "0", "not in 1..=64"),
        ("--max-inflight-bytes", "100", "not in"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tracepost"))
            .args(["serve", flag, value])
            .output()
            .expect("run tracepost serve");
        assert_eq!(output.status.code(), Some(2), "{flag} {value} is a usage error");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
