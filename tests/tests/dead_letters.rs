//! Dead letters end to end: real Redis, the real sidecar binary and its SQLite ledger. Bad
//! entries are written into a shard's stream by hand (`redis-cli XADD`): the writer records
//! them as dead letters and acknowledges them, the events behind them reach the ledger, the
//! stream is trimmed past them, and `creditgate-sidecar dead-letters` lists, replays and
//! discards them with the actor recorded.

use std::process::Output;
use std::time::Duration;

use creditgate_protocol::{EventBody, Keyspace, ReserveOutcome};
use creditgate_testkit::{
    ADMIN_OPERATIONS, AdminHarness, Backend, LedgerHarness, PREFIX, SHARDS, WebhookReceiver,
    grant_request, reserve_request, sidecar_command, wait_for, without_nonce,
};
use serde_json::Value;

/// Runs `creditgate-sidecar dead-letters <args> <ledger>` against the harness's ledger.
fn dead_letters(h: &LedgerHarness, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec!["dead-letters".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(h.target.args());
    sidecar_command(&all, h.dir.path()).expect("sidecar command runs")
}

fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn listed(h: &LedgerHarness, all: bool) -> Vec<Value> {
    let mut args = vec!["list", "--json"];
    if all {
        args.push("--all");
    }
    let text = stdout_ok(&dead_letters(h, &args));
    serde_json::from_str::<Value>(&text)
        .expect("list --json is JSON")
        .as_array()
        .expect("an array")
        .clone()
}

fn xlen(h: &LedgerHarness, key: &str) -> u64 {
    h.redis.cli(&["XLEN", key]).unwrap().parse().unwrap()
}

#[test]
fn bad_stream_entries_are_dead_lettered_and_the_stream_moves_on() {
    let h = LedgerHarness::start(Backend::Sqlite);
    let keyspace = Keyspace::new(PREFIX, SHARDS);
    let shard = keyspace.shard_of("acme");
    let stream = keyspace.events(shard);
    h.grant(&grant_request("acme", "g1", "api", 100, None, 0));
    let first = reserve_request("acme", "h1", "api", 30, 120_000);
    assert!(matches!(h.reserve(&first), ReserveOutcome::Placed { .. }));
    h.wait_caught_up();

    let (_, grant_event) =
        h.rt.block_on(h.store.stream_events(shard, 100))
            .unwrap()
            .into_iter()
            .find(|(_, e)| matches!(e.body, EventBody::GrantAdded { .. }))
            .expect("the grant's event");
    // An entry that is no event, and the grant's event again with another amount.
    let garbage = h
        .redis
        .cli(&[
            "XADD",
            &stream,
            "*",
            "v",
            "1",
            "kind",
            "hold_placed",
            "customer",
            "acme",
        ])
        .unwrap();
    let mut args: Vec<String> = vec!["XADD".into(), stream.clone(), "*".into()];
    for (field, value) in grant_event.to_fields() {
        args.push(field.to_string());
        args.push(if field == "amount" {
            "999".into()
        } else {
            value
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let conflict = h.redis.cli(&args).unwrap();
    // Traffic behind them.
    let later = reserve_request("acme", "h2", "api", 10, 120_000);
    assert!(matches!(h.reserve(&later), ReserveOutcome::Placed { .. }));

    wait_for(
        "the hold behind the bad entries reaches the ledger",
        Duration::from_secs(10),
        || {
            h.entries()
                .iter()
                .any(|e| without_nonce(&e.entry.event_id) == "hold:h2:placed")
        },
        || h.log(),
    );
    let (_, pending) = h.stream_counts();
    assert_eq!(pending, 0, "the bad entries are acknowledged");
    wait_for(
        "the stream is trimmed past the bad entries",
        Duration::from_secs(25),
        || xlen(&h, &stream) == 0,
        || h.log(),
    );
    assert_eq!(
        h.sidecar()
            .metric("creditgate_dead_letters_total", &[("reason", "malformed")]),
        1.0
    );
    assert_eq!(
        h.sidecar()
            .metric("creditgate_dead_letters_total", &[("reason", "conflict")]),
        1.0
    );

    let open = listed(&h, false);
    assert_eq!(open.len(), 2, "{open:?}");
    let (newest, oldest) = (&open[0], &open[1]);
    assert_eq!(oldest["stream_id"], garbage.as_str());
    assert_eq!(oldest["reason"], "malformed");
    assert_eq!(oldest["fields"]["customer"], "acme");
    assert_eq!(newest["stream_id"], conflict.as_str());
    assert_eq!(newest["reason"], "conflict");
    assert_eq!(newest["event_id"], "grant:g1:added");
    assert_eq!(newest["fields"]["amount"], "999");
    assert_eq!(newest["shard"], shard.0);

    // The conflict cannot be replayed: the refusal is recorded and it stays open.
    let id = newest["id"].to_string();
    let replay = dead_letters(
        &h,
        &[
            "replay",
            &id,
            "--actor",
            "ops@example.com",
            "--reason",
            "try",
        ],
    );
    assert!(!replay.status.success());
    assert!(
        String::from_utf8_lossy(&replay.stderr).contains("still holds event id grant:g1:added"),
        "{replay:?}"
    );
    // The garbage is discarded; nothing is deleted.
    let garbage_id = oldest["id"].to_string();
    let discarded = dead_letters(
        &h,
        &[
            "discard",
            &garbage_id,
            "--actor",
            "ops@example.com",
            "--reason",
            "hand-made",
        ],
    );
    assert!(stdout_ok(&discarded).contains("discarded"));
    let again = dead_letters(
        &h,
        &[
            "discard",
            &garbage_id,
            "--actor",
            "ops@example.com",
            "--reason",
            "twice",
        ],
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("discarded already"));

    let open = listed(&h, false);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["actions"][0]["action"], "replay_failed");
    let shown: Value =
        serde_json::from_str(&stdout_ok(&dead_letters(&h, &["show", &garbage_id]))).unwrap();
    assert_eq!(shown["state"], "discarded");
    let action = &shown["actions"][0];
    assert_eq!(action["action"], "discarded");
    assert_eq!(action["note"], "hand-made");
    assert!(
        action["actor"]
            .as_str()
            .unwrap()
            .starts_with("cli:ops@example.com"),
        "{action}"
    );
    assert_eq!(listed(&h, true).len(), 2);
    // The ledger kept its own grant and both holds.
    let totals = h.ledger_totals();
    assert_eq!(totals[&("acme".to_string(), "api".to_string())], (100, 40));
}

#[test]
fn the_admin_api_lists_and_discards_dead_letters_with_the_token_as_actor() {
    let receiver = WebhookReceiver::start(0).expect("receiver");
    let ops = format!(
        "{ADMIN_OPERATIONS}\n[webhooks]\nurl = \"{}\"\nsecret = \"{}\"\nexpiring_within_days = 7\n",
        receiver.url("/events"),
        "0123456789abcdef0123456789abcdef"
    );
    let h = AdminHarness::start_with(Backend::Sqlite, &ops);
    let keyspace = Keyspace::new(PREFIX, SHARDS);
    let stream = keyspace.events(keyspace.shard_of("acme"));
    let garbage = h
        .redis
        .cli(&["XADD", &stream, "*", "v", "1", "kind", "grant_added"])
        .unwrap();
    let mut listed = Vec::new();
    wait_for(
        "the writer records the entry as a dead letter",
        Duration::from_secs(10),
        || {
            let answer = h.get("readonly", "/v1/admin/dead-letters");
            assert_eq!(answer.status, 200, "{answer:?}");
            listed = answer.json()["dead_letters"].as_array().unwrap().clone();
            !listed.is_empty()
        },
        || h.sidecar.log_tail(30),
    );
    let letter = &listed[0];
    assert_eq!(letter["stream_id"], garbage.as_str());
    assert_eq!(letter["reason"], "malformed");
    assert_eq!(letter["state"], "open");
    let id = letter["id"].as_i64().unwrap();
    let path = format!("/v1/admin/dead-letters/{id}");
    // The alert: one `ledger.dead_letter` webhook for it.
    let hooks = h.wait_for_webhooks(&receiver, 1);
    let alert: Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(alert["kind"], "ledger.dead_letter");
    assert_eq!(alert["dead_letter_id"], id);
    assert_eq!(alert["reason"], "malformed");

    assert_eq!(h.get("billing", &path).status, 403);
    let bad = h.get("readonly", "/v1/admin/dead-letters?limit=0");
    assert_eq!(
        (bad.status, bad.json()["field"].clone()),
        (400, "limit".into())
    );
    let bad = h.get("readonly", "/v1/admin/dead-letters/x");
    assert_eq!(
        (bad.status, bad.json()["field"].clone()),
        (400, "id".into())
    );
    assert_eq!(h.get("readonly", "/v1/admin/dead-letters/999").status, 404);
    let discard = format!("{path}/discard");
    let reason = serde_json::json!({"reason": "hand-made entry"});
    assert_eq!(h.post("support", &discard, reason.clone()).status, 403);
    let no_reason = h.post("admin", &discard, serde_json::json!({}));
    assert_eq!(no_reason.status, 400, "{no_reason:?}");

    let done = h.post("admin", &discard, reason);
    assert_eq!(done.status, 200, "{done:?}");
    let shown = h.get("readonly", &path).json();
    assert_eq!(shown["state"], "discarded");
    assert_eq!(shown["actions"][0]["actor"], "admin");
    assert_eq!(shown["actions"][0]["note"], "hand-made entry");
    let replay = h.post(
        "admin",
        &format!("{path}/replay"),
        serde_json::json!({"reason": "again"}),
    );
    assert_eq!(
        (replay.status, replay.json()["error"].clone()),
        (409, "dead_letter_resolved".into())
    );
    let open = h.get("readonly", "/v1/admin/dead-letters").json();
    assert!(open["dead_letters"].as_array().unwrap().is_empty());
    let all = h.get("readonly", "/v1/admin/dead-letters?state=all").json();
    assert_eq!(all["dead_letters"].as_array().unwrap().len(), 1);
}
