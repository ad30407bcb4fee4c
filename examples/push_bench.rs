//! Per-message Web Push crypto cost (issue 3 asks for it in its closing note).
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
//!     cargo run --release --example push_bench
//! ```
//!
//! Encryption is one ephemeral key pair plus one ECDH per message (two P-256 scalar
//! multiplications), HKDF and AES-GCM; VAPID tokens are signed once per origin and cached.

use assistantd::push::{crypto, VapidKeys};
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: u32 = 2000;

fn per_op(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS)
}

fn main() {
    crypto::init();
    let receiver = crypto::random_secret_key();
    let p256dh = crypto::point_bytes(&receiver.public_key());
    let auth = [7u8; crypto::AUTH_LEN];
    for size in [200, crypto::MAX_PLAINTEXT] {
        let msg = vec![b'x'; size];
        let start = Instant::now();
        for _ in 0..ROUNDS {
            black_box(crypto::encrypt_single_record(&p256dh, &auth, &msg).unwrap());
        }
        println!(
            "encrypt {size:>4} B payload: {:7.1} µs/message",
            per_op(start)
        );
    }
    let vapid = VapidKeys::generate("mailto:bench@example.com").unwrap();
    let start = Instant::now();
    for i in 0..ROUNDS {
        black_box(vapid.sign_jwt("https://push.example.com", 1_700_000_000 + u64::from(i)));
    }
    println!("VAPID JWT, signed:        {:7.1} µs", per_op(start));
    let start = Instant::now();
    for _ in 0..ROUNDS {
        black_box(vapid.authorization("https://push.example.com"));
    }
    println!("VAPID JWT, from cache:    {:7.2} µs", per_op(start));
}
