//! What one JetStream stream can acknowledge at most, with nothing of the
//! service around it: a raw publisher appending small messages to many
//! subjects, each publish carrying `Nats-Expected-Last-Subject-Sequence`
//! (as every org append does) and awaited before the subject's next, with
//! `--in-flight` publishes outstanding in all.
//!
//!   cargo bench -p actors --bench jetstream_ceiling -- --url nats://127.0.0.1:4222
//!
//! On an R1 stream with `sync_interval: always` the server writes and fsyncs
//! each message on its own, one at a time per stream; this rate is then the
//! ceiling of the `jetstream` backend in messages per second whatever the
//! service does, and in webhooks per second when each message carries one
//! action (a load spread over many orgs). It prints one JSON line.
//!
//! `--streams N` spreads the same publishers over N streams on the server
//! (publisher w on stream w mod N): what sharding the log would buy, since
//! each stream writes and fsyncs on its own. The contract has one stream;
//! this is a measurement, not an option of the service.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

struct Args {
    url: String,
    messages: usize,
    subjects: usize,
    in_flight: usize,
    payload_bytes: usize,
    replicas: usize,
    streams: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "nats://127.0.0.1:4222".into(),
        messages: 40_000,
        subjects: 5_000,
        in_flight: 256,
        payload_bytes: 300,
        replicas: 1,
        streams: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || value.parse::<usize>().expect("a number");
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--messages" => args.messages = number(),
            "--subjects" => args.subjects = number(),
            "--in-flight" => args.in_flight = number(),
            "--payload-bytes" => args.payload_bytes = number(),
            "--replicas" => args.replicas = number(),
            "--streams" => args.streams = number(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        args.subjects >= args.in_flight,
        "--subjects must be at least --in-flight"
    );
    assert!(
        (1..=args.in_flight).contains(&args.streams),
        "--streams must be from 1 to --in-flight"
    );
    args
}

fn main() {
    let args = parse_args();
    actix::System::new().block_on(publish_all(args));
}

async fn publish_all(args: Args) {
    let client = async_nats::connect(&args.url)
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    let streams: Vec<(String, String)> = (0..args.streams)
        .map(|k| {
            let id = format!("{}_{k}", std::process::id());
            (format!("CEILING_{id}"), format!("ceiling_{id}"))
        })
        .collect();
    for (name, prefix) in &streams {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.org.>")],
            storage: stream::StorageType::File,
            num_replicas: args.replicas,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the stream");
    }

    // Worker w owns subjects w, w + in_flight, ...: one publish outstanding
    // per subject, so each expected sequence is known without asking.
    let per_worker = args.messages / args.in_flight;
    let subjects_per_worker = args.subjects / args.in_flight;
    let payload = bytes::Bytes::from(vec![b'x'; args.payload_bytes]);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.in_flight)
        .map(|w| {
            let prefix = streams[w % args.streams].1.clone();
            let (js, payload) = (js.clone(), payload.clone());
            actix::spawn(async move {
                let mut last: HashMap<usize, u64> = HashMap::new();
                for j in 0..per_worker {
                    let subject = w + args.in_flight * (j % subjects_per_worker);
                    let expected = last.get(&subject).copied().unwrap_or(0);
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(format!("{w}-{j}"))
                        .expected_last_subject_sequence(expected);
                    let ack = js
                        .send_publish(format!("{prefix}.org.{subject}"), publish)
                        .await
                        .expect("publish")
                        .await
                        .expect("acknowledged");
                    last.insert(subject, ack.sequence);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = per_worker * args.in_flight;
    for (name, _) in &streams {
        js.delete_stream(name).await.expect("delete the stream");
    }
    println!(
        "{}",
        serde_json::json!({
            "messages": messages,
            "secs": secs,
            "messagesPerSec": messages as f64 / secs,
            "inFlight": args.in_flight,
            "replicas": args.replicas,
            "streams": args.streams,
        })
    );
}
