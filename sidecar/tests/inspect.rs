//! Runs the real `creditgate-sidecar inspect` binary against a real `redis-server` whose
//! credits were written through the protocol's `RedisStore`, and checks what ops see.

use std::process::{Command, Output};

use creditgate_protocol::{
    CreditStore, GrantOutcome, GrantRequest, GrantSource, Keyspace, RedisStore, RedisTarget,
    ReserveOutcome, ReserveRequest, Shard,
};
use creditgate_testkit::{RedisServer, free_port};
use serde_json::Value;

/// 2099-12-31T23:59:59Z, in ms: a fixed expiry far enough ahead to stay in the future.
const PROMO_EXPIRES_AT_MS: u64 = 4_102_444_799_000;

fn grant(customer: &str, grant_id: &str, amount: u64) -> GrantRequest {
    GrantRequest {
        customer: customer.into(),
        grant_id: grant_id.into(),
        credit_type: "api".into(),
        amount,
        priority: 10,
        expires_at_ms: None,
        cost_basis: 0,
        source: GrantSource::Purchase,
        actor: "inspect-test".into(),
        reason: "seed".into(),
    }
}

fn reserve(customer: &str, hold_id: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        customer: customer.into(),
        hold_id: hold_id.into(),
        credit_type: "api".into(),
        amount,
        ttl_ms: 60_000,
        overdraft_limit: 0,
        force: false,
        request_id: format!("req-{hold_id}"),
        route: "POST /v1/search".into(),
        feature: "search".into(),
        retain_ms: 86_400_000,
        pricing_version: String::new(),
        occurred_at_ms: None,
    }
}

/// Another customer on `shard`, to check that `--customer` filters a shared stream.
fn neighbour_on(shard: Shard) -> String {
    let keyspace = Keyspace::default();
    (0..10_000)
        .map(|i| format!("neighbour{i}"))
        .find(|customer| keyspace.shard_of(customer) == shard)
        .expect("some customer shares the shard")
}

/// Seeds `acme` with a paid grant, a cheaper-to-burn promotion and one pending hold, and
/// gives a neighbour on the same shard one grant, in this order.
fn seed(url: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let store =
            RedisStore::connect(&RedisTarget::Single(url.into()), Keyspace::default(), 2_000)
                .await
                .expect("connect");
        let paid = GrantRequest {
            cost_basis: 5_000_000,
            ..grant("acme", "g-paid", 1_000)
        };
        let promo = GrantRequest {
            priority: 1,
            expires_at_ms: Some(PROMO_EXPIRES_AT_MS),
            source: GrantSource::Promotion,
            ..grant("acme", "g-promo", 200)
        };
        for request in [&paid, &promo] {
            let outcome = store.grant(request).await.expect("grant");
            assert!(
                matches!(outcome, GrantOutcome::Granted { .. }),
                "{outcome:?}"
            );
        }
        let outcome = store
            .reserve(&reserve("acme", "h1", 250))
            .await
            .expect("reserve");
        assert!(
            matches!(outcome, ReserveOutcome::Placed { .. }),
            "{outcome:?}"
        );

        let neighbour = neighbour_on(Keyspace::default().shard_of("acme"));
        let outcome = store
            .grant(&grant(&neighbour, "g-n", 7))
            .await
            .expect("grant");
        assert!(
            matches!(outcome, GrantOutcome::Granted { .. }),
            "{outcome:?}"
        );
        neighbour
    })
}

fn sidecar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditgate-sidecar"))
        .args(args)
        .output()
        .expect("run creditgate-sidecar")
}

fn stdout_of(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[test]
fn balance_is_printed_as_tables_and_as_json() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    seed(&url);

    let output = sidecar(&["inspect", "balance", "--redis", &url, "acme"]);
    let text = stdout_of(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("customer acme (shard s14) at 20"),
        "{text}"
    );
    assert_eq!(
        lines[1..],
        [
            "",
            "CREDIT_TYPE  AVAILABLE  HELD  DEBT",
            "api                950   250     0",
            "",
            "GRANT    CREDIT_TYPE  REMAINING  HELD  PRIORITY  EXPIRES_AT            COST_BASIS_MICROS",
            "g-paid   api                950    50        10  never                           5000000",
            "g-promo  api                  0   200         1  2099-12-31T23:59:59Z                  0",
        ],
        "{text}"
    );

    let output = sidecar(&["inspect", "balance", "--redis", &url, "--json", "acme"]);
    let json: Value = serde_json::from_str(&stdout_of(&output)).expect("valid JSON");
    assert_eq!(json["customer"], "acme");
    assert_eq!(json["shard"], 14);
    let api = &json["types"][0];
    assert_eq!(
        (
            &api["credit_type"],
            &api["available"],
            &api["held"],
            &api["debt"]
        ),
        (
            &Value::from("api"),
            &Value::from(950),
            &Value::from(250),
            &Value::from(0)
        )
    );
    let grants = json["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["grant_id"], "g-paid");
    assert_eq!(grants[0]["expires_at"], Value::Null);
    assert_eq!(grants[0]["cost_basis_micros"], 5_000_000);
    assert_eq!(grants[1]["grant_id"], "g-promo");
    assert_eq!(grants[1]["held"], 200);
    assert_eq!(grants[1]["priority"], 1);
    assert_eq!(grants[1]["expires_at"], "2099-12-31T23:59:59Z");
    assert_eq!(grants[1]["expires_at_ms"], PROMO_EXPIRES_AT_MS);

    let output = sidecar(&["inspect", "balance", "--redis", &url, "nobody"]);
    assert!(stdout_of(&output).ends_with("\n\nno credits\n"));
}

#[test]
fn events_show_the_newest_of_a_shard_or_of_one_customer() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let neighbour = seed(&url);

    // The whole shard: all four events, oldest first.
    let output = sidecar(&["inspect", "events", "--redis", &url, "--shard", "14"]);
    let text = stdout_of(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "STREAM_ID",
            "KIND",
            "CUSTOMER",
            "CREDIT_TYPE",
            "EVENT_ID",
            "AMOUNTS"
        ]
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let kinds_and_customers: Vec<(&str, &str, &str)> =
        rows.iter().map(|row| (row[1], row[2], row[3])).collect();
    assert_eq!(
        kinds_and_customers,
        [
            ("grant_added", "acme", "api"),
            ("grant_added", "acme", "api"),
            ("hold_placed", "acme", "api"),
            ("grant_added", neighbour.as_str(), "api"),
        ]
    );
    for row in &rows {
        let (ms, seq) = row[0].split_once('-').expect("stream id is <ms>-<seq>");
        assert!(
            ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
            "{row:?}"
        );
    }
    assert_eq!(
        rows[0][4..],
        [
            "grant:g-paid:added",
            "amount=1000",
            "debt_repaid=0",
            "expires_at=never",
            "source=purchase"
        ]
    );
    assert_eq!(rows[2][5..], ["amount=250", "overdraft=0"]);
    // `hold:h1:<placement nonce>:placed`.
    assert!(
        rows[2][4].starts_with("hold:h1:") && rows[2][4].ends_with(":placed"),
        "{:?}",
        rows[2]
    );

    // --count keeps the newest ones.
    let output = sidecar(&[
        "inspect", "events", "--redis", &url, "--shard", "14", "--count", "2",
    ]);
    let text = stdout_of(&output);
    let newest: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(newest, rows[2..], "{text}");

    // --customer reads the customer's shard and keeps only the customer's events.
    let output = sidecar(&[
        "inspect",
        "events",
        "--redis",
        &url,
        "--customer",
        "acme",
        "--count",
        "2",
    ]);
    let text = stdout_of(&output);
    let acme: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(acme.len(), 2, "{text}");
    assert!(acme[0].contains("grant:g-promo:added"), "{text}");
    assert!(
        acme[1].contains("hold:h1:") && acme[1].contains(":placed"),
        "{text}"
    );

    let output = sidecar(&["inspect", "events", "--redis", &url, "--shard", "3"]);
    assert_eq!(stdout_of(&output), "no events in shard s3\n");

    let output = sidecar(&["inspect", "events", "--redis", &url, "--shard", "16"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: shard 16 does not exist: with 16 shards they are 0 to 15\n"
    );
}

#[test]
fn an_unreachable_redis_is_a_clear_error_naming_the_url() {
    // A free port nobody listens on.
    let url = format!("redis://127.0.0.1:{}/", free_port());
    for args in [
        vec!["inspect", "balance", "--redis", &url, "acme"],
        vec!["inspect", "events", "--redis", &url, "--shard", "0"],
    ] {
        let output = sidecar(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with(&format!("error: cannot connect to Redis at {url}: ")),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
