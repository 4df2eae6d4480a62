//! Route lookup on a realistic 1,000-route config: the compiled trie against a naive
//! linear first-match scan of the same routes, measured in the same run so the report
//! reads as a ratio.
//!
//! Run: `cargo bench -p creditgate-benches --bench route_table`.

use std::fmt::Write as _;
use std::hint::black_box;

use creditgate_config::PricingConfig;
use criterion::{Criterion, criterion_group, criterion_main};

/// Services in the generated config; each contributes `ROUTES_PER_SERVICE` routes.
const SERVICES: usize = 50;
/// Routes per service: 1,000 routes in all.
const ROUTES_PER_SERVICE: usize = 20;

/// Builds the config text: per service, literal routes, parameter routes with several
/// methods, two host-specific routes and a trailing wildcard, so every pattern kind and
/// every method and host branch is exercised.
fn config_text() -> String {
    let mut text = String::from(
        r#"
[credit_types.api]
scale = 3

[upstreams.default]
address = "127.0.0.1:8080"

[features.read]
credit_type = "api"
cost = { kind = "fixed", amount = 1 }

[features.write]
credit_type = "api"
cost = { kind = "fixed", amount = 5 }

[features.export]
credit_type = "api"
cost = { kind = "per_unit", query = "pages", rate = 2, max = 1000 }
"#,
    );
    for service in 0..SERVICES {
        let routes: [(&str, Option<String>, String, &str); ROUTES_PER_SERVICE] = [
            ("POST", None, format!("/v1/svc{service}/items"), "write"),
            ("GET", None, format!("/v1/svc{service}/items"), "read"),
            (
                "GET",
                None,
                format!("/v1/svc{service}/items/{{id}}"),
                "read",
            ),
            (
                "PUT",
                None,
                format!("/v1/svc{service}/items/{{id}}"),
                "write",
            ),
            (
                "PATCH",
                None,
                format!("/v1/svc{service}/items/{{id}}"),
                "write",
            ),
            (
                "DELETE",
                None,
                format!("/v1/svc{service}/items/{{id}}"),
                "write",
            ),
            (
                "GET",
                None,
                format!("/v1/svc{service}/items/{{id}}/versions"),
                "read",
            ),
            (
                "GET",
                None,
                format!("/v1/svc{service}/items/{{id}}/versions/{{v}}"),
                "read",
            ),
            (
                "POST",
                None,
                format!("/v1/svc{service}/items/{{id}}/export"),
                "export",
            ),
            (
                "GET",
                None,
                format!("/v1/svc{service}/users/{{user}}/items"),
                "read",
            ),
            ("POST", None, format!("/v1/svc{service}/batch"), "write"),
            ("GET", None, format!("/v1/svc{service}/search"), "read"),
            (
                "GET",
                None,
                format!("/v1/svc{service}/reports/daily"),
                "export",
            ),
            (
                "GET",
                None,
                format!("/v1/svc{service}/reports/monthly"),
                "export",
            ),
            (
                "GET",
                None,
                format!("/v1/svc{service}/reports/{{report}}"),
                "export",
            ),
            (
                "GET",
                Some(format!("admin{service}.example.com")),
                format!("/v1/svc{service}/stats"),
                "read",
            ),
            (
                "*",
                Some(format!("admin{service}.example.com")),
                format!("/v1/svc{service}/admin/*"),
                "write",
            ),
            ("GET", None, format!("/v1/svc{service}/stats"), "read"),
            (
                "POST",
                None,
                format!("/v1/svc{service}/files/{{file}}/*"),
                "write",
            ),
            ("GET", None, format!("/v1/svc{service}/*"), "read"),
        ];
        for (method, host, path, feature) in routes {
            text.push_str("\n[[routes]]\n");
            let _ = writeln!(text, "method = {method:?}");
            if let Some(host) = host {
                let _ = writeln!(text, "host = {host:?}");
            }
            let _ = writeln!(text, "path = {path:?}\nfeature = {feature:?}");
        }
    }
    text
}

/// A lookup to measure: name, method, host, path, and the route index it must find.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    Option<usize>,
);

fn route_table(c: &mut Criterion) {
    let config = match PricingConfig::from_toml_str(&config_text(), "bench.toml") {
        Ok(config) => config,
        Err(errors) => panic!("the bench config must validate:\n{errors}"),
    };
    let table = config.route_table();
    assert_eq!(table.len(), SERVICES * ROUTES_PER_SERVICE);

    let last = SERVICES - 1;
    let middle = SERVICES / 2;
    let cases: [Case; 4] = [
        (
            "hit_start",
            "POST",
            None,
            "/v1/svc0/items".to_owned(),
            Some(0),
        ),
        (
            "hit_end",
            "GET",
            Some("api.example.com"),
            format!("/v1/svc{last}/reports/daily?tz=UTC"),
            Some(last * ROUTES_PER_SERVICE + 12),
        ),
        (
            "param_hit",
            "GET",
            None,
            format!("/v1/svc{middle}/items/it_9f8e7d/versions/12"),
            Some(middle * ROUTES_PER_SERVICE + 7),
        ),
        (
            "miss",
            "GET",
            None,
            "/v2/unknown/path/here".to_owned(),
            None,
        ),
    ];

    for (name, method, host, path, expected) in &cases {
        let fast = table.lookup(method, *host, path).map(|found| found.index);
        let slow = table
            .lookup_linear(method, *host, path)
            .map(|found| found.index);
        assert_eq!((fast, slow), (*expected, *expected), "{name}");

        let mut group = c.benchmark_group(format!("route_table/{name}"));
        group.bench_function("trie", |b| {
            b.iter(|| table.lookup(black_box(method), black_box(*host), black_box(path)));
        });
        group.bench_function("linear", |b| {
            b.iter(|| table.lookup_linear(black_box(method), black_box(*host), black_box(path)));
        });
        group.finish();
    }

    c.bench_function("route_table/compile_1000_routes", |b| {
        b.iter(|| PricingConfig::from_toml_str(black_box(&config_text()), "bench.toml"));
    });
}

criterion_group!(benches, route_table);
criterion_main!(benches);
