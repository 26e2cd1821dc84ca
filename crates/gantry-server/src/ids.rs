//! Random tokens (agents', projects', the registration token) and ids (trace ids, generated delivery
//! ids).

/// A random token: 32 bytes, hex.
pub(crate) fn random_token() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A random id: 16 bytes, hex (trace ids, generated delivery ids).
pub(crate) fn random_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
