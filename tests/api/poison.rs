//! Inputs and outputs the broker will not take: an oversized input gets a
//! dead letter that fits, an output the broker refuses for good is replaced
//! by a dead letter standing for it, and in both cases the service goes on
//! and no offset moves past an input whose outputs were not taken.

use base64::Engine;
use sha2::{Digest, Sha256};
use tollgate::contract::{DeadLetter, Outcome};

use crate::helpers::*;

/// Sends `n` valid requests with ids `{prefix}-{i}` on `key`; returns the
/// partition they went to and the offset of the last one.
async fn send_valid(app: &TestApp, prefix: &str, n: usize, key: &str) -> (i32, i64) {
    let mut at = (0, 0);
    for i in 0..n {
        let token = app.infra.token(TRAVEL, &[], 600);
        let body = request(
            &format!("{prefix}-{i:02}"),
            Some(&token),
            "smart-tourism",
            "GX-610100-TOUR-0001",
            "query",
            "industry",
        );
        at = app.client.produce(&app.infra.topics.requests, key, body.to_string().as_bytes(), &[]).await.unwrap();
    }
    at
}

/// Stops the app (it must stop cleanly: it did not die on the input) and
/// returns the offset its group committed on `partition` of the requests.
async fn stop_and_committed(app: &mut TestApp, partition: i32) -> Option<i64> {
    app.stop().await;
    let committed = app.client.committed_offsets(&app.infra.group, &app.infra.topics.requests).unwrap();
    committed.get(&partition).copied().flatten()
}

fn decisions_all_approved(messages: &[tollgate::kafka::ConsumedMessage]) {
    for m in messages {
        assert_eq!(decision(m).outcome, Outcome::Approved, "{:?}", decision(m).reasons);
    }
}

#[tokio::test]
async fn an_oversized_input_among_valid_ones_gets_a_dead_letter_that_fits_and_the_rest_are_decided() {
    let mut app = spawn_app().await;
    send_valid(&app, "before", 20, "one-partition").await;
    let big = vec![b'x'; 800_000];
    let (partition, big_offset) =
        app.client.produce(&app.infra.topics.requests, "one-partition", &big, &[]).await.unwrap();
    let (_, last) = send_valid(&app, "after", 20, "one-partition").await;

    decisions_all_approved(&read_n(&app.reader(&app.infra.topics.decisions), 40).await);
    let dlq = app.reader(&app.infra.topics.dlq);
    let letter: DeadLetter = serde_json::from_slice(&read_n(&dlq, 1).await[0].payload).unwrap();
    assert_eq!(letter.error.code, "input.too_large");
    assert_eq!((letter.partition, letter.offset), (partition, big_offset));
    assert_eq!(letter.payload_bytes, 800_000);
    assert_eq!(letter.payload_sha256, hex::encode(Sha256::digest(&big)));
    assert!(letter.truncated);
    let carried = base64::engine::general_purpose::STANDARD.decode(&letter.payload_base64).unwrap();
    assert_eq!(carried.len(), app.settings.service.dead_letter_max_bytes);
    assert!(big.starts_with(&carried));
    assert_no_more(&dlq).await;

    assert_eq!(stop_and_committed(&mut app, partition).await, Some(last + 1), "every input acknowledged");
}

#[tokio::test]
async fn an_output_the_broker_refuses_is_replaced_by_a_dead_letter_and_the_service_goes_on() {
    let infra = infra().await;
    let mut settings = infra.settings();
    // Decisions (~2 KB) fit; a dead letter carrying 10 KB of garbage does
    // not, and neither does the first letter standing for it.
    settings.kafka.producer.insert("message.max.bytes".into(), "4000".into());
    let mut app = start(infra, settings).await;
    send_valid(&app, "before", 5, "one-partition").await;
    let garbage = vec![b'{'; 10_000];
    // The app's own client shares its producer limit; a plain one sends this.
    let plain =
        tollgate::kafka::Client::new(&tollgate::config::Settings::default().kafka, &app.infra.bootstrap).unwrap();
    let (partition, garbage_offset) =
        plain.produce(&app.infra.topics.requests, "one-partition", &garbage, &[]).await.unwrap();
    let (_, last) = send_valid(&app, "after", 5, "one-partition").await;

    decisions_all_approved(&read_n(&app.reader(&app.infra.topics.decisions), 10).await);
    let dlq = app.reader(&app.infra.topics.dlq);
    let letter: DeadLetter = serde_json::from_slice(&read_n(&dlq, 1).await[0].payload).unwrap();
    assert_eq!(letter.error.code, "output.refused", "{}", letter.error.message);
    assert_eq!((letter.partition, letter.offset), (partition, garbage_offset));
    let refused = letter.refused_output.expect("names the refused output");
    assert_eq!(refused.topic, app.infra.topics.dlq, "the refused output was the input's own dead letter");
    assert!(refused.bytes > 4000);
    // The fuller letter was refused too: this one carries none of the input.
    assert!(letter.payload_base64.is_empty() && letter.truncated);
    assert_eq!(letter.payload_sha256, hex::encode(Sha256::digest(&garbage)));
    assert_no_more(&dlq).await;

    let metrics = app.health.metrics();
    assert!(metrics.contains("tollgate_outputs_refused_total 2\n"), "{metrics}");
    assert_eq!(stop_and_committed(&mut app, partition).await, Some(last + 1), "every input acknowledged");
}
