//! Sending deliveries: the envelope, the subscriber's URL, method and headers, the Standard
//! Webhooks signature, and what the answer means (delivered, discarded, retried with
//! exponential back-off and jitter, failed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::config::Config;
use crate::model::{fill, interpolate, Endpoint};
use crate::store::{now_ms, Delivery, Outcome};
use crate::Flare;

/// An RFC 3339 time from milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The delay before attempt `attempt + 1` (0-based `attempt` failed): `base * 2^attempt`,
/// capped, scaled by `0.5 + random / 2` (jitter; `random` in [0, 1)).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, random: f64) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.min(30)));
    exponential
        .min(cap)
        .mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0)
}

/// A cheap random number in [0, 1) for jitter.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64 ^ std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

/// The key a receiver drops duplicates by: the document, its revision and the action.
pub fn idempotency_key(delivery: &Delivery) -> String {
    format!("{}@{}:{}", delivery.url, delivery.revision, delivery.action)
}

/// The request a delivery sends: method, URL, headers, body.
pub fn request(delivery: &Delivery) -> (String, String, Vec<(String, String)>, Vec<u8>) {
    let subscription = &delivery.subscription;
    let mut values: BTreeMap<String, String> = Endpoint::parse(&delivery.resource.endpoint)
        .ok()
        .and_then(|endpoint| endpoint.capture(&delivery.url))
        .unwrap_or_default();
    values.insert("revision".into(), delivery.revision.to_string());
    let target = subscription.target(&delivery.action);
    let url = fill(target.url.as_deref().unwrap_or_default(), &values);
    let method = target.method.clone().unwrap_or_else(|| "POST".into());
    let body = if subscription.envelope {
        let mut envelope = json!({
            "id": delivery.url,
            "action": delivery.action,
            "updatedAt": rfc3339(delivery.queued_at),
        });
        if !subscription.data.is_null() {
            envelope["data"] = interpolate(&subscription.data, &values);
        }
        if subscription.document {
            envelope["document"] = delivery.content.clone();
        }
        envelope.to_string().into_bytes()
    } else if subscription.document {
        delivery.content.to_string().into_bytes()
    } else {
        Vec::new()
    };
    let key = idempotency_key(delivery);
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("idempotency-key".to_owned(), key.clone()),
    ];
    for (name, list) in &target.headers {
        if name.eq_ignore_ascii_case("content-type") {
            headers.retain(|(n, _)| n != "content-type");
        }
        for value in list {
            headers.push((name.to_ascii_lowercase(), value.clone()));
        }
    }
    if let Some(secret) = &subscription.secret {
        let timestamp = now_ms() / 1000;
        headers.push(("webhook-id".into(), key.clone()));
        headers.push(("webhook-timestamp".into(), timestamp.to_string()));
        headers.push((
            "webhook-signature".into(),
            sign(secret, &key, timestamp, &body),
        ));
    }
    (method, url, headers, body)
}

/// `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), as Standard Webhooks
/// specifies; a `whsec_` secret is base64 after the prefix, any other is used as bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|encoded| engine.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", engine.encode(mac.finalize().into_bytes()))
}

/// Sends one delivery and says how it ended; a retry is due after a back-off from `now` (ms),
/// spread by `random` in [0, 1).
pub fn send(
    agent: &ureq::Agent,
    config: &Config,
    delivery: &Delivery,
    now: i64,
    random: f64,
) -> Outcome {
    let (method, url, headers, body) = request(delivery);
    let mut request = agent.request(&method, &url);
    for (name, value) in &headers {
        request = request.set(name, value);
    }
    let status = match request.send_bytes(&body) {
        Ok(response) => Ok(response.status()),
        Err(ureq::Error::Status(code, _)) => Ok(code),
        Err(ureq::Error::Transport(err)) => Err(format!("{method} {url}: {err}")),
    };
    let subscription = &delivery.subscription;
    let error = match status {
        Ok(code) if subscription.success.contains(&code) => return Outcome::Delivered,
        Ok(code) if subscription.discard.contains(&code) => return Outcome::Discarded(code),
        Ok(code) => format!("{method} {url}: status {code}"),
        Err(err) => err,
    };
    let attempts = delivery.attempts as u32 + 1;
    if attempts >= config.max_attempts {
        return Outcome::Failed(format!("{error} (after {attempts} attempts)"));
    }
    let delay = backoff(
        delivery.attempts as u32,
        config.retry_base,
        config.retry_cap,
        random,
    );
    Outcome::Retry {
        at: now + delay.as_millis() as i64,
        error,
    }
}

/// The delivery workers: each claims due deliveries, sends them, records the outcome.
pub fn run(flare: &Arc<Flare>, context: &epi::ProcessContext) {
    let agent = ureq::AgentBuilder::new()
        .timeout(flare.config.timeout)
        .max_idle_connections_per_host(flare.config.workers.max(1))
        .build();
    std::thread::scope(|scope| {
        for number in 0..flare.config.workers {
            let (flare, agent) = (flare.clone(), agent.clone());
            std::thread::Builder::new()
                .name(format!("epi-flare delivery {number}"))
                .spawn_scoped(scope, move || worker(&flare, &agent))
                .expect("start a delivery worker");
        }
        while !context.wait_stop(Duration::from_secs(1)) {
            if let Err(err) = flare.store.maintain() {
                epi::log::error(&err);
            }
            context.set_report(&flare.report());
        }
        flare.stop_workers();
    });
}

fn worker(flare: &Flare, agent: &ureq::Agent) {
    let lease = flare.config.timeout.as_millis() as i64 * 2 + 1_000;
    while !flare.stopping() {
        match flare.store.claim(1, lease) {
            Ok(claimed) if claimed.is_empty() => flare.wait_for_work(Duration::from_millis(50)),
            Ok(claimed) => {
                for delivery in claimed {
                    let outcome = send(
                        agent,
                        &flare.config,
                        &delivery,
                        flare.clock.now_ms(),
                        jitter(),
                    );
                    flare
                        .sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Outcome::Failed(error) = &outcome {
                        epi::log::warn(&format!(
                            "delivery {} failed for good: {error}",
                            delivery.seq
                        ));
                    }
                    if let Err(err) = flare.store.finish(&delivery, &outcome) {
                        epi::log::error(&err);
                    }
                }
            }
            Err(err) => {
                epi::log::error(&err);
                flare.wait_for_work(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Clock, Pause, Store};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    /// A clock the test moves.
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A subscriber on 127.0.0.1 answering 500 to everything; counts the requests.
    fn failing_subscriber() -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for connection in listener.incoming().flatten() {
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut writer = connection.try_clone().unwrap();
                    let mut reader = BufReader::new(connection);
                    loop {
                        let mut line = String::new();
                        let mut length = 0;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = writer.write_all(b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        (url, count)
    }

    #[test]
    fn a_failing_delivery_backs_off_by_the_clock_until_it_is_marked_failed() {
        let dir = std::env::temp_dir().join(format!("flare-backoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let start = 1_700_000_000_000;
        let clock = Arc::new(ManualClock(AtomicI64::new(start)));
        let pause = Pause {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        let store =
            crate::store::sqlite::Sqlite::open(&dir.join("flare.sqlite"), pause, clock.clone())
                .unwrap();
        let config = Config::from_json(&serde_json::json!({
            "store": dir.join("flare.sqlite"), "retry_base_ms": 100, "retry_cap_ms": 400,
            "max_attempts": 5, "timeout_ms": 2000,
        }))
        .unwrap();
        let (url, requests) = failing_subscriber();
        let resource = crate::model::resource(
            &serde_json::json!({"endpoint": "http://api.io/users/{id}", "change": {"field": "v"}}),
            "r1".into(),
        )
        .unwrap();
        let subscription = crate::model::subscription(
            &serde_json::json!({"endpoint": {"url": url}, "delivery": {"success": [200], "discard": [410]}}),
            "s1".into(),
            &resource,
        )
        .unwrap();
        store.insert_resource(&resource).unwrap();
        store.insert_subscription(&subscription).unwrap();
        store
            .put_document(
                &resource,
                "http://api.io/users/7",
                &serde_json::json!({"v": 1}),
                1,
            )
            .unwrap();
        let agent = ureq::AgentBuilder::new().build();
        // One worker step at the clock's time: claim, send (full back-off, no jitter), record.
        let step = || -> Option<Outcome> {
            let delivery = store.claim(1, 10_000).unwrap().pop()?;
            let outcome = send(&agent, &config, &delivery, clock.now_ms(), 1.0);
            store.finish(&delivery, &outcome).unwrap();
            Some(outcome)
        };
        let at = |offset: i64| clock.0.store(start + offset, Ordering::SeqCst);
        at(0);
        assert!(matches!(step(), Some(Outcome::Retry { at, .. }) if at == start + 100));
        // Due 100, 200, 400, then 400 (the cap) ms after each failure; nothing before.
        let mut due = 100;
        for delay in [200, 400, 400] {
            at(due - 1);
            assert!(step().is_none(), "claimed 1 ms before it was due at +{due}");
            at(due);
            let outcome = step().expect("due");
            assert!(
                matches!(&outcome, Outcome::Retry { at, .. } if *at == start + due + delay),
                "after the failure at +{due}: {outcome:?}"
            );
            due += delay;
        }
        at(due);
        assert!(
            matches!(step(), Some(Outcome::Failed(error)) if error.contains("after 5 attempts"))
        );
        at(due + 1_000_000);
        assert!(step().is_none(), "a failed delivery is not tried again");
        assert_eq!(requests.load(Ordering::SeqCst), 5);
        let (failed, total) = store.deliveries("failed", 10, 0).unwrap();
        assert_eq!(
            (total, failed[0]["attempts"].clone()),
            (1, serde_json::json!(5))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn back_off_doubles_up_to_the_cap_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        // Without jitter's spread (random = 1): 100, 200, 400, ... capped at 2 s.
        let delays: Vec<u128> = (0..7)
            .map(|a| backoff(a, base, cap, 1.0).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        // Jitter keeps each delay within [half, whole].
        assert_eq!(backoff(3, base, cap, 0.0).as_millis(), 400);
        assert_eq!(backoff(40, base, cap, 0.5).as_millis(), 1500);
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
