//! The browser harness itself, against a tiny page served on loopback: a headless Chromium
//! opens it, reads its text, fills and submits its form, resizes the window and saves a
//! screenshot. The console and customer-page tests build on this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use creditgate_testkit::{Browser, PHONE_WINDOW};

const PAGE: &str = "<!doctype html><html><head><title>smoke</title></head><body>\
    <h1 id=\"greeting\">Hello from loopback</h1>\
    <form id=\"echo\" method=\"post\" action=\"/echo\">\
    <input name=\"word\"><textarea name=\"note\"></textarea>\
    <button type=\"submit\">Send</button></form></body></html>";

/// Answers one HTTP/1.1 request: the page for a GET, the posted form body for a POST.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let page = if request_line.starts_with("POST /echo ") {
        let posted = String::from_utf8_lossy(&body)
            .replace('&', "&amp;")
            .replace('<', "&lt;");
        format!("<!doctype html><title>echo</title><p id=\"posted\">{posted}</p>")
    } else {
        PAGE.to_string()
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    )
}

fn serve_page() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("http://{}/", listener.local_addr().expect("local addr"));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream);
        }
    });
    url
}

#[test]
fn a_headless_chromium_opens_reads_submits_and_screenshots_a_loopback_page() {
    let url = serve_page();
    let browser = Browser::start().expect("start chromedriver and chromium");
    browser.open(&url).unwrap();
    assert_eq!(browser.title().unwrap(), "smoke");
    assert_eq!(browser.text("#greeting").unwrap(), "Hello from loopback");

    browser
        .submit(
            "#echo",
            &[("word", "credits"), ("note", "a <b>bold</b> claim")],
        )
        .unwrap();
    assert!(browser.current_url().unwrap().ends_with("/echo"));
    let posted = browser.text("#posted").unwrap();
    assert!(posted.contains("word=credits"), "posted: {posted}");
    assert!(
        posted.contains("note=a+%3Cb%3Ebold%3C%2Fb%3E+claim"),
        "posted: {posted}"
    );

    browser
        .set_window_size(PHONE_WINDOW.0, PHONE_WINDOW.1)
        .unwrap();
    let width = browser.eval("return window.innerWidth;", vec![]).unwrap();
    assert_eq!(
        width.as_u64(),
        Some(u64::from(PHONE_WINDOW.0)),
        "viewport width"
    );
    let shot = browser.dir().join("smoke.png");
    browser.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
}
