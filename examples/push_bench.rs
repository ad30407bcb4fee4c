//! Per-message Web Push crypto cost (issue 3 asks for it in its closing note).
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
//!     cargo run --release --example push_bench
//! ```
//!
//! Encryption is one ephemeral key pair plus one ECDH per message (two P-256 scalar
//! multiplications, `k·G` through a fixed-base comb and `k·P` through a comb kept per device),
//! HKDF and AES-GCM; VAPID tokens are signed once per origin and cached. A device's first
//! message also builds its comb: that case is timed on its own line.
//!
//! The last line, `RESULT per_message_us=…`, is what `make bench` reads: encrypting a 200-byte
//! payload (a typical notification) plus the cached VAPID `Authorization` header.

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
    let mut encrypt_200 = 0.0;
    for size in [200, crypto::MAX_PLAINTEXT] {
        let msg = vec![b'x'; size];
        let start = Instant::now();
        for _ in 0..ROUNDS {
            black_box(crypto::encrypt_single_record(&p256dh, &auth, &msg).unwrap());
        }
        let us = per_op(start);
        if size == 200 {
            encrypt_200 = us;
        }
        println!("encrypt {size:>4} B payload: {us:7.1} µs/message");
    }
    let devices: Vec<_> = (0..ROUNDS)
        .map(|_| crypto::point_bytes(&crypto::random_secret_key().public_key()))
        .collect();
    let msg = vec![b'x'; 200];
    let start = Instant::now();
    for device in &devices {
        black_box(crypto::encrypt_single_record(device, &auth, &msg).unwrap());
    }
    println!(
        "encrypt  200 B, new device each time: {:7.1} µs/message",
        per_op(start)
    );
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
    let cached = per_op(start);
    println!("VAPID JWT, from cache:    {cached:7.2} µs");
    breakdown(&p256dh, &auth, encrypt_200);
    println!("RESULT per_message_us={:.1}", encrypt_200 + cached);
}

/// The steps of one encryption, timed one by one with the same crates `src/push/crypto.rs`
/// uses, to show where the time goes. Both scalar multiplications go through comb tables
/// private to that module, so their cost is derived: the whole encryption minus the other
/// steps. The generic multiplications of the p256 crate are timed for comparison.
fn breakdown(p256dh: &[u8; crypto::POINT_LEN], auth: &[u8; crypto::AUTH_LEN], encrypt_us: f64) {
    use aes_gcm::aead::{Aead, KeyInit};
    use hkdf::Hkdf;
    use sha2::Sha256;
    let step = |name: &str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..ROUNDS {
            f();
        }
        let us = per_op(start);
        println!("  step {name:<40} {us:7.1} µs");
        us
    };
    println!("per-message steps (200 B payload):");
    let mut sum = step("ephemeral key (random scalar)", &mut || {
        black_box(crypto::random_secret_key());
    });
    sum += step("import p256dh (on-curve check)", &mut || {
        black_box(crypto::import_point(black_box(p256dh)).unwrap());
    });
    let ikm = [1u8; 32];
    sum += step("HKDF-SHA256 x3", &mut || {
        for _ in 0..3 {
            let mut out = [0u8; 32];
            Hkdf::<Sha256>::new(Some(&auth[..]), black_box(&ikm))
                .expand(b"WebPush: info\0", &mut out)
                .unwrap();
            black_box(out);
        }
    });
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&[3u8; 16]).unwrap();
    let msg = vec![b'x'; 256];
    sum += step("AES-128-GCM seal, 256 B", &mut || {
        black_box(
            cipher
                .encrypt(&aes_gcm::Nonce::from([0u8; 12]), black_box(&msg[..]))
                .unwrap(),
        );
    });
    println!(
        "  step {:<40} {:7.1} µs",
        "k·G + k·P (comb tables), derived",
        (encrypt_us - sum).max(0.0)
    );
    let eph = crypto::random_secret_key();
    let ua = crypto::import_point(p256dh).unwrap();
    step("for comparison: generic k·P (p256 ECDH)", &mut || {
        black_box(p256::ecdh::diffie_hellman(
            eph.to_nonzero_scalar(),
            black_box(&ua).as_affine(),
        ));
    });
    step("for comparison: generic k·G (p256 crate)", &mut || {
        black_box(crypto::point_bytes(&black_box(&eph).public_key()));
    });
}
