//! Test certificates made with rcgen: a CA and a leaf it signed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate and key written as PEM files.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA (its certificate in `ca.pem`) and a leaf it signed for
/// 127.0.0.1 and localhost.
pub fn ca_and_leaf(dir: &Path) -> (PathBuf, Pem) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferry test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let pem = Pem {
        cert: dir.join("fullchain.pem"),
        key: dir.join("privkey.pem"),
    };
    // Leaf first, then the CA, as Let's Encrypt's fullchain.pem is.
    std::fs::write(&pem.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&pem.key, leaf_key.serialize_pem()).unwrap();
    (ca_file, pem)
}
