//! Web Push message encryption (RFC 8291 on RFC 8188 `aes128gcm`) on RustCrypto primitives:
//! `p256` for ECDH and key import/export, `hkdf` + `sha2` for key derivation, `aes-gcm` for the
//! record. No OpenSSL.
//!
//! Two things live here:
//!
//! * [`P256Cryptographer`], an [`ece::crypto::Cryptographer`] so the `ece` crate (built without
//!   its OpenSSL backend) works; [`init`] registers it once per process. It is checked against
//!   `ece`'s own `test_cryptographer` (the RFC 8291 example) in the tests below.
//! * [`encrypt_single_record`], which is what the sender uses. `ece::encrypt` pads to multiples
//!   of 128 bytes and splits plaintexts above about 3,967 bytes into two records, which push
//!   services reject; `ece`'s record-level primitive is private. So the RFC 8188 framing is done
//!   here directly (about 40 lines), on the same primitives as the cryptographer, and every
//!   message is exactly one record. Both are verified against `ece::decrypt` in unit tests and
//!   against Python's `http_ece` in `tests/push_interop.rs`.

use super::PushError;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use ece::crypto::{Cryptographer, EcKeyComponents, LocalKeyPair, RemotePublicKey};
use hkdf::Hkdf;
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq};
use p256::{AffinePoint, ProjectivePoint, PublicKey, Scalar, SecretKey};
use sha2::Sha256;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, OnceLock};

/// The record size we declare and the most bytes a push message body may have. Push services
/// accept at most 4096 bytes of body (RFC 8291 §4 recommends senders stay within it; FCM,
/// Mozilla autopush, APNs and WNS all enforce it).
pub const MAX_RECORD_SIZE: usize = 4096;
/// RFC 8188 header: salt (16) + rs (4) + idlen (1) + keyid (the 65-byte ephemeral public key).
pub const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// The largest plaintext that fits one record within [`MAX_RECORD_SIZE`] bytes of body:
/// 4096 − 86 (header) − 16 (tag) − 1 (padding delimiter) = 3993.
pub const MAX_PLAINTEXT: usize = MAX_RECORD_SIZE - HEADER_LEN - TAG_LEN - 1;
/// Padded plaintext (content + delimiter + zeros) is rounded up to a multiple of this many
/// bytes, capped so the body never exceeds [`MAX_RECORD_SIZE`]. Hides exact lengths from the
/// push service at a cost of at most 127 bytes (the same block `ece` and `web-push` use).
pub const PAD_BLOCK: usize = 128;
/// Length of an uncompressed SEC1 P-256 point (`0x04 || x || y`).
pub const POINT_LEN: usize = 65;
/// Length of a Web Push authentication secret.
pub const AUTH_LEN: usize = 16;
/// Length of a P-256 private scalar (and of an ECDH shared secret).
pub const SCALAR_LEN: usize = 32;
/// RFC 8291 §3.4 key-info prefix.
const WEBPUSH_INFO: &[u8] = b"WebPush: info\0";
const SALT_LEN: usize = 16;
const KEY_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const IKM_LEN: usize = 32;
/// Delimiter of the last (here: only) record, RFC 8188 §2.
const LAST_RECORD_DELIMITER: u8 = 2;

static INIT: Once = Once::new();

/// Registers [`P256Cryptographer`] as `ece`'s backend. Idempotent and cheap; call it at start
/// (the push functions call it too, so forgetting is harmless).
pub fn init() {
    INIT.call_once(|| {
        // Fails only if some other code registered a cryptographer first; that one is then
        // used by `ece`, and our own encryption below does not depend on it.
        let _ = ece::crypto::set_cryptographer(&P256Cryptographer);
    });
}

/// Imports an uncompressed SEC1 point, checking that it lies on P-256.
pub fn import_point(raw: &[u8]) -> Result<PublicKey, PushError> {
    if raw.len() != POINT_LEN || raw[0] != 0x04 {
        return Err(PushError::InvalidKey(format!(
            "p256dh must be a {POINT_LEN}-byte uncompressed P-256 point"
        )));
    }
    PublicKey::from_sec1_bytes(raw)
        .map_err(|_| PushError::InvalidKey("p256dh is not a point on the P-256 curve".into()))
}

/// The uncompressed SEC1 encoding of a public key.
pub fn point_bytes(key: &PublicKey) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(key.to_encoded_point(false).as_bytes());
    out
}

/// A fresh random P-256 secret key from the OS random source.
pub fn random_secret_key() -> SecretKey {
    loop {
        // A 32-byte string is a valid scalar unless it is 0 or ≥ n (probability ~2^-32).
        let bytes: [u8; SCALAR_LEN] = crate::util::random_bytes();
        if let Ok(k) = SecretKey::from_bytes(&bytes.into()) {
            return k;
        }
    }
}

/// Fixed-base comb for the ephemeral public keys: 64 windows of 4 bits, each with the 16
/// multiples `j · 16^i · G` as affine points (72 KiB, built once on first use). `k·G` is then
/// 64 mixed additions with constant-time table scans instead of a generic scalar
/// multiplication (256 doublings + 64 additions): measured ~170 µs → ~40 µs per key.
struct GeneratorTable(Vec<[AffinePoint; COMB_ENTRIES]>);

const COMB_WINDOWS: usize = 64;
const COMB_ENTRIES: usize = 16;

fn generator_table() -> &'static GeneratorTable {
    static TABLE: OnceLock<GeneratorTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut windows = Vec::with_capacity(COMB_WINDOWS);
        let mut base = ProjectivePoint::GENERATOR; // 16^i · G
        for _ in 0..COMB_WINDOWS {
            let mut row = [AffinePoint::IDENTITY; COMB_ENTRIES];
            let mut acc = ProjectivePoint::IDENTITY;
            for entry in row.iter_mut().skip(1) {
                acc += base;
                *entry = acc.to_affine();
            }
            windows.push(row);
            for _ in 0..4 {
                base = base.double();
            }
        }
        GeneratorTable(windows)
    })
}

/// The entry at `index` of a 16-entry row, in constant time: every entry is read, and the
/// choice is a mask, not a branch or an address that depends on `index`.
fn select<T: ConditionallySelectable>(row: &[T; COMB_ENTRIES], index: u8) -> T {
    let mut pick = row[0];
    for (j, entry) in row.iter().enumerate().skip(1) {
        pick.conditional_assign(entry, (j as u8).ct_eq(&index));
    }
    pick
}

/// `k · G` through [`generator_table`], in constant time (mixed addition handles the identity
/// entry without a branch).
fn mul_generator(k: &Scalar) -> ProjectivePoint {
    let bytes = k.to_bytes(); // big-endian
    let mut acc = ProjectivePoint::IDENTITY;
    for (i, row) in generator_table().0.iter().enumerate() {
        let byte = bytes[31 - i / 2];
        let nibble = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        acc += select(row, nibble);
    }
    acc
}

fn public_key_of(secret: &SecretKey) -> PublicKey {
    PublicKey::from_affine(mul_generator(&secret.to_nonzero_scalar()).to_affine())
        .expect("k·G of a non-zero k is not the identity")
}

/// Teeth of a [`DeviceComb`]: bits `i`, `i + 64`, `i + 128` and `i + 192` of the scalar pick
/// one of its 16 entries.
const DEVICE_COMB_TEETH: usize = 4;
/// Distance between the teeth, and the number of doublings per multiplication (256 / teeth).
const DEVICE_COMB_SPACING: usize = 64;
/// Devices whose combs are kept (about 1.2 KiB each); the cache is emptied when it is full.
pub const MAX_DEVICE_COMBS: usize = 256;

/// A fixed-base comb (Lim–Lee) for one device's public key `P`: entry `b` is
/// `Σ b_j · 2^(64·j) · P`. The ECDH of every later message to the device is then 64 doublings
/// and 64 additions (constant-time scans of 16 entries) instead of the generic 256 doublings and
/// 79 additions. Building it costs less than one generic multiplication; the key is public, so
/// keeping it costs nothing in secrecy. Entries stay projective: p256 0.13 offers no batch
/// inversion, and 15 separate ones would cost more than mixed additions save.
struct DeviceComb([ProjectivePoint; COMB_ENTRIES]);

impl DeviceComb {
    fn new(point: &AffinePoint) -> DeviceComb {
        let mut teeth = [ProjectivePoint::IDENTITY; DEVICE_COMB_TEETH];
        let mut base = ProjectivePoint::from(*point);
        for (j, tooth) in teeth.iter_mut().enumerate() {
            if j > 0 {
                for _ in 0..DEVICE_COMB_SPACING {
                    base = base.double();
                }
            }
            *tooth = base;
        }
        let mut entries = [ProjectivePoint::IDENTITY; COMB_ENTRIES];
        for b in 1..COMB_ENTRIES {
            let top = (usize::BITS - 1 - b.leading_zeros()) as usize;
            entries[b] = entries[b & !(1 << top)] + teeth[top];
        }
        DeviceComb(entries)
    }

    /// `k · P`, in constant time.
    fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let bytes = k.to_bytes(); // big-endian
        let bit = |i: usize| (bytes[31 - i / 8] >> (i % 8)) & 1;
        let mut acc = ProjectivePoint::IDENTITY;
        for i in (0..DEVICE_COMB_SPACING).rev() {
            acc = acc.double();
            let mut index = 0u8;
            for j in 0..DEVICE_COMB_TEETH {
                index |= bit(i + j * DEVICE_COMB_SPACING) << j;
            }
            acc += select(&self.0, index);
        }
        acc
    }
}

fn device_combs() -> &'static Mutex<HashMap<[u8; POINT_LEN], Arc<DeviceComb>>> {
    static COMBS: OnceLock<Mutex<HashMap<[u8; POINT_LEN], Arc<DeviceComb>>>> = OnceLock::new();
    COMBS.get_or_init(Default::default)
}

/// The comb for a device's key, built (after the on-curve check) on its first message.
fn device_comb(p256dh: &[u8; POINT_LEN]) -> Result<Arc<DeviceComb>, PushError> {
    let lock = || device_combs().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(comb) = lock().get(p256dh) {
        return Ok(comb.clone());
    }
    let comb = Arc::new(DeviceComb::new(import_point(p256dh)?.as_affine()));
    let mut combs = lock();
    if combs.len() >= MAX_DEVICE_COMBS {
        combs.clear();
    }
    combs.insert(*p256dh, comb.clone());
    Ok(comb)
}

fn ecdh(secret: &SecretKey, public: &PublicKey) -> [u8; SCALAR_LEN] {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
    (*shared.raw_secret_bytes()).into()
}

fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), PushError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .map_err(|_| PushError::Crypto("HKDF output length out of range"))
}

fn gcm(key: &[u8], iv: &[u8]) -> Result<(Aes128Gcm, Nonce<aes_gcm::aead::consts::U12>), PushError> {
    let iv: [u8; NONCE_LEN] = iv
        .try_into()
        .map_err(|_| PushError::Crypto("AES-GCM nonce must be 12 bytes"))?;
    if key.len() != KEY_LEN {
        return Err(PushError::Crypto("AES-128 key must be 16 bytes"));
    }
    let cipher =
        Aes128Gcm::new_from_slice(key).map_err(|_| PushError::Crypto("bad AES-128 key"))?;
    Ok((cipher, Nonce::from(iv)))
}

fn aes128gcm_seal(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, PushError> {
    let (cipher, nonce) = gcm(key, iv)?;
    cipher
        .encrypt(&nonce, data)
        .map_err(|_| PushError::Crypto("AES-GCM encryption failed"))
}

fn aes128gcm_open(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, PushError> {
    let (cipher, nonce) = gcm(key, iv)?;
    cipher
        .decrypt(&nonce, data)
        .map_err(|_| PushError::Crypto("AES-GCM authentication failed"))
}

/// Encrypts `plaintext` for one subscription as an RFC 8291 `aes128gcm` body with exactly one
/// record: header (86 bytes) + ciphertext of `plaintext || 0x02 || zero padding` + tag. The
/// result is at most [`MAX_RECORD_SIZE`] bytes. A fresh ephemeral key and salt are used for
/// every call.
///
/// Errors: [`PushError::PayloadTooLarge`] above [`MAX_PLAINTEXT`] bytes,
/// [`PushError::InvalidKey`] when `p256dh` is not a point on P-256.
pub fn encrypt_single_record(
    p256dh: &[u8; POINT_LEN],
    auth: &[u8; AUTH_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, PushError> {
    let ephemeral = random_secret_key();
    let salt: [u8; SALT_LEN] = crate::util::random_bytes();
    let pad = padding_for(plaintext.len());
    encrypt_with(&ephemeral, &salt, p256dh, auth, plaintext, pad)
}

/// Zero bytes added after the delimiter so that the padded plaintext is a multiple of
/// [`PAD_BLOCK`], without going past [`MAX_PLAINTEXT`] + 1.
fn padding_for(len: usize) -> usize {
    let padded = len + 1;
    let rounded = padded.div_ceil(PAD_BLOCK) * PAD_BLOCK;
    rounded.min(MAX_PLAINTEXT + 1).saturating_sub(padded)
}

/// The deterministic core of [`encrypt_single_record`] (tests pin it to RFC 8291's example).
fn encrypt_with(
    ephemeral: &SecretKey,
    salt: &[u8; SALT_LEN],
    p256dh: &[u8; POINT_LEN],
    auth: &[u8; AUTH_LEN],
    plaintext: &[u8],
    pad: usize,
) -> Result<Vec<u8>, PushError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PushError::PayloadTooLarge {
            size: plaintext.len(),
            max: MAX_PLAINTEXT,
        });
    }
    let k = ephemeral.to_nonzero_scalar();
    let shared: [u8; SCALAR_LEN] = device_comb(p256dh)?.mul(&k).to_affine().x().into();
    let mut as_public = [0u8; POINT_LEN];
    as_public.copy_from_slice(
        mul_generator(&k)
            .to_affine()
            .to_encoded_point(false)
            .as_bytes(),
    );

    // RFC 8291 §3.3/§3.4: IKM = HKDF(auth, ecdh, "WebPush: info\0" || ua_public || as_public).
    let mut key_info = Vec::with_capacity(WEBPUSH_INFO.len() + 2 * POINT_LEN);
    key_info.extend_from_slice(WEBPUSH_INFO);
    key_info.extend_from_slice(p256dh);
    key_info.extend_from_slice(&as_public);
    let mut ikm = [0u8; IKM_LEN];
    hkdf_sha256(auth, &shared, &key_info, &mut ikm)?;
    // RFC 8188 §2.2/§2.3: CEK and nonce from the salt; one record, so sequence number 0 and
    // the nonce is used as is.
    let mut cek = [0u8; KEY_LEN];
    hkdf_sha256(salt, &ikm, b"Content-Encoding: aes128gcm\0", &mut cek)?;
    let mut nonce = [0u8; NONCE_LEN];
    hkdf_sha256(salt, &ikm, b"Content-Encoding: nonce\0", &mut nonce)?;

    let pad = pad.min(MAX_PLAINTEXT - plaintext.len());
    let mut record = Vec::with_capacity(plaintext.len() + 1 + pad + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(LAST_RECORD_DELIMITER);
    record.resize(plaintext.len() + 1 + pad, 0);
    let sealed = aes128gcm_seal(&cek, &nonce, &record)?;

    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(salt);
    out.extend_from_slice(&(MAX_RECORD_SIZE as u32).to_be_bytes());
    out.push(POINT_LEN as u8);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&sealed);
    debug_assert!(out.len() <= MAX_RECORD_SIZE);
    Ok(out)
}

/// `ece`'s backend on `p256`, `hkdf`, `sha2` and `aes-gcm`.
#[derive(Debug, Clone, Copy, Default)]
pub struct P256Cryptographer;

/// A P-256 key pair as `ece` sees it.
struct KeyPair {
    secret: SecretKey,
    public: [u8; POINT_LEN],
}

impl KeyPair {
    fn new(secret: SecretKey) -> Self {
        let public = point_bytes(&public_key_of(&secret));
        KeyPair { secret, public }
    }
}

impl LocalKeyPair for KeyPair {
    fn pub_as_raw(&self) -> ece::Result<Vec<u8>> {
        Ok(self.public.to_vec())
    }

    fn raw_components(&self) -> ece::Result<EcKeyComponents> {
        Ok(EcKeyComponents::new(
            self.secret.to_bytes().to_vec(),
            self.public.to_vec(),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A peer's P-256 public key as `ece` sees it.
struct PeerKey {
    key: PublicKey,
    raw: [u8; POINT_LEN],
}

impl RemotePublicKey for PeerKey {
    fn as_raw(&self) -> ece::Result<Vec<u8>> {
        Ok(self.raw.to_vec())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Cryptographer for P256Cryptographer {
    fn generate_ephemeral_keypair(&self) -> ece::Result<Box<dyn LocalKeyPair>> {
        Ok(Box::new(KeyPair::new(random_secret_key())))
    }

    fn import_key_pair(&self, components: &EcKeyComponents) -> ece::Result<Box<dyn LocalKeyPair>> {
        if components.private_key().len() != SCALAR_LEN {
            return Err(ece::Error::InvalidKeyLength);
        }
        let secret =
            SecretKey::from_slice(components.private_key()).map_err(|_| ece::Error::CryptoError)?;
        let pair = KeyPair::new(secret);
        // The components carry the public key too; a mismatch means corrupt key material.
        if pair.public[..] != *components.public_key() {
            return Err(ece::Error::CryptoError);
        }
        Ok(Box::new(pair))
    }

    fn import_public_key(&self, raw: &[u8]) -> ece::Result<Box<dyn RemotePublicKey>> {
        let key = import_point(raw).map_err(|_| ece::Error::InvalidKeyLength)?;
        Ok(Box::new(PeerKey {
            raw: point_bytes(&key),
            key,
        }))
    }

    fn compute_ecdh_secret(
        &self,
        remote: &dyn RemotePublicKey,
        local: &dyn LocalKeyPair,
    ) -> ece::Result<Vec<u8>> {
        let remote = remote
            .as_any()
            .downcast_ref::<PeerKey>()
            .ok_or(ece::Error::CryptoError)?;
        let local = local
            .as_any()
            .downcast_ref::<KeyPair>()
            .ok_or(ece::Error::CryptoError)?;
        Ok(ecdh(&local.secret, &remote.key).to_vec())
    }

    fn hkdf_sha256(
        &self,
        salt: &[u8],
        secret: &[u8],
        info: &[u8],
        len: usize,
    ) -> ece::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        hkdf_sha256(salt, secret, info, &mut out).map_err(|_| ece::Error::CryptoError)?;
        Ok(out)
    }

    fn aes_gcm_128_encrypt(&self, key: &[u8], iv: &[u8], data: &[u8]) -> ece::Result<Vec<u8>> {
        aes128gcm_seal(key, iv, data).map_err(|_| ece::Error::CryptoError)
    }

    fn aes_gcm_128_decrypt(
        &self,
        key: &[u8],
        iv: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> ece::Result<Vec<u8>> {
        aes128gcm_open(key, iv, ciphertext_and_tag).map_err(|_| ece::Error::CryptoError)
    }

    fn random_bytes(&self, dest: &mut [u8]) -> ece::Result<()> {
        getrandom::getrandom(dest).map_err(|_| ece::Error::CryptoError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comb_matches_generic_scalar_multiplication() {
        for _ in 0..50 {
            let k = random_secret_key();
            assert_eq!(public_key_of(&k), k.public_key());
        }
        let one = SecretKey::from_slice(&{
            let mut b = [0u8; 32];
            b[31] = 1;
            b
        })
        .unwrap();
        assert_eq!(public_key_of(&one), one.public_key());
        let max = SecretKey::from_slice(&[
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x50,
        ])
        .unwrap(); // n - 1
        assert_eq!(public_key_of(&max), max.public_key());
    }

    /// Scalars that stress the comb's bit layout: 1, each tooth's lowest and highest bit,
    /// every bit of one column, n − 1.
    fn edge_scalars() -> Vec<SecretKey> {
        let mut out = Vec::new();
        let mut push = |bytes: [u8; 32]| out.push(SecretKey::from_slice(&bytes).unwrap());
        for bit in [0usize, 63, 64, 127, 128, 191, 192, 255] {
            let mut b = [0u8; 32];
            b[31 - bit / 8] = 1 << (bit % 8);
            push(b);
        }
        let mut column = [0u8; 32];
        for bit in [5usize, 69, 133, 197] {
            column[31 - bit / 8] |= 1 << (bit % 8);
        }
        push(column);
        push([
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x50,
        ]); // n - 1
        out
    }

    #[test]
    fn device_comb_matches_generic_ecdh() {
        for _ in 0..10 {
            let device = random_secret_key().public_key();
            let comb = DeviceComb::new(device.as_affine());
            let mut scalars = edge_scalars();
            scalars.extend((0..20).map(|_| random_secret_key()));
            for k in scalars {
                let x: [u8; SCALAR_LEN] = comb.mul(&k.to_nonzero_scalar()).to_affine().x().into();
                assert_eq!(x, ecdh(&k, &device));
            }
        }
    }

    #[test]
    fn device_combs_are_cached_per_key_and_bounded() {
        let raw = point_bytes(&random_secret_key().public_key());
        let first = device_comb(&raw).unwrap();
        assert!(Arc::ptr_eq(&first, &device_comb(&raw).unwrap()));
        for _ in 0..MAX_DEVICE_COMBS + 5 {
            device_comb(&point_bytes(&random_secret_key().public_key())).unwrap();
            assert!(device_combs().lock().unwrap().len() <= MAX_DEVICE_COMBS);
        }
        let mut off_curve = raw;
        off_curve[64] ^= 1;
        assert!(matches!(
            device_comb(&off_curve),
            Err(PushError::InvalidKey(_))
        ));
        assert!(!device_combs().lock().unwrap().contains_key(&off_curve));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A receiver key pair and auth secret, as a browser would make them.
    fn receiver() -> (EcKeyComponents, [u8; POINT_LEN], [u8; AUTH_LEN]) {
        let secret = random_secret_key();
        let public = point_bytes(&secret.public_key());
        let components = EcKeyComponents::new(secret.to_bytes().to_vec(), public.to_vec());
        (components, public, crate::util::random_bytes())
    }

    #[test]
    fn passes_eces_own_cryptographer_suite() {
        ece::crypto::test_cryptographer(P256Cryptographer);
    }

    #[test]
    fn init_is_idempotent_and_ece_round_trips() {
        init();
        init();
        let (components, public, auth) = receiver();
        let ct = ece::encrypt(&public, &auth, b"hello").unwrap();
        assert_eq!(ece::decrypt(&components, &auth, &ct).unwrap(), b"hello");
    }

    #[test]
    fn max_plaintext_is_3993() {
        assert_eq!(HEADER_LEN, 86);
        assert_eq!(MAX_PLAINTEXT, 3993);
    }

    /// RFC 8291 §5 / Appendix A: with the example's keys and salt (and no extra padding) our
    /// framing reproduces the example ciphertext byte for byte.
    #[test]
    fn reproduces_rfc8291_example() {
        let as_private = unhex("c9f58f89813e9f8e872e71f42aa64e1757c9254dcc62b72ddc010bb4043ea11c");
        let ua_public: [u8; 65] = unhex(
            "042571b2becdfde360551aaf1ed0f4cd366c11cebe555f89bcb7b186a53339173168ece2ebe018597bd30479b86e3c8f8eced577ca59187e9246990db682008b0e",
        )
        .try_into()
        .unwrap();
        let auth: [u8; 16] = unhex("05305932a1c7eabe13b6cec9fda48882")
            .try_into()
            .unwrap();
        let salt: [u8; 16] = unhex("0c6bfaadad67958803092d454676f397")
            .try_into()
            .unwrap();
        let expected = unhex("0c6bfaadad67958803092d454676f397000010004104fe33f4ab0dea71914db55823f73b54948f41306d920732dbb9a59a53286482200e597a7b7bc260ba1c227998580992e93973002f3012a28ae8f06bbb78e5ec0ff297de5b429bba7153d3a4ae0caa091fd425f3b4b5414add8ab37a19c1bbb05cf5cb5b2a2e0562d558635641ec52812c6c8ff42e95ccb86be7cd");
        let secret = SecretKey::from_slice(&as_private).unwrap();
        let ct = encrypt_with(
            &secret,
            &salt,
            &ua_public,
            &auth,
            b"When I grow up, I want to be a watermelon",
            0,
        )
        .unwrap();
        assert_eq!(ct, expected);
    }

    #[test]
    fn single_record_sizes_decrypt_with_ece() {
        init();
        let (components, public, auth) = receiver();
        for size in [
            0,
            1,
            126,
            127,
            128,
            3967,
            3968,
            MAX_PLAINTEXT - 1,
            MAX_PLAINTEXT,
        ] {
            let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
            let ct = encrypt_single_record(&public, &auth, &plaintext).unwrap();
            assert!(
                ct.len() <= MAX_RECORD_SIZE,
                "size {size}: {} bytes",
                ct.len()
            );
            // One record: everything after the header is a single sealed record.
            assert!(ct.len() - HEADER_LEN <= MAX_RECORD_SIZE);
            assert_eq!(
                (ct.len() - HEADER_LEN - TAG_LEN).is_multiple_of(PAD_BLOCK),
                size < 3968
            );
            let back = ece::decrypt(&components, &auth, &ct).unwrap();
            assert_eq!(back, plaintext, "size {size}");
        }
        let ct = encrypt_single_record(&public, &auth, &[7u8; MAX_PLAINTEXT]).unwrap();
        assert_eq!(ct.len(), MAX_RECORD_SIZE);
    }

    #[test]
    fn one_byte_over_is_refused() {
        let (_, public, auth) = receiver();
        let err = encrypt_single_record(&public, &auth, &[0u8; MAX_PLAINTEXT + 1]).unwrap_err();
        assert!(matches!(
            err,
            PushError::PayloadTooLarge {
                size: 3994,
                max: 3993
            }
        ));
    }

    #[test]
    fn off_curve_or_compressed_keys_are_refused() {
        let (_, mut public, auth) = receiver();
        public[64] ^= 1;
        assert!(matches!(
            encrypt_single_record(&public, &auth, b"x"),
            Err(PushError::InvalidKey(_))
        ));
        let mut compressed = [0u8; 65];
        compressed[0] = 0x02;
        assert!(import_point(&compressed).is_err());
    }

    #[test]
    fn padding_rounds_to_blocks_within_the_cap() {
        assert_eq!(padding_for(0), 127);
        assert_eq!(padding_for(127), 0);
        assert_eq!(padding_for(128), 127);
        assert_eq!(padding_for(MAX_PLAINTEXT), 0);
        assert_eq!(padding_for(3900), 3968 - 3901);
        assert_eq!(padding_for(3970), MAX_PLAINTEXT - 3970);
    }
}
