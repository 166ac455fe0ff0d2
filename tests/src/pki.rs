//! Certificates made at test time: a CA, server certificates for 127.0.0.1/localhost, and
//! client certificates, as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

/// Paths of a certificate and its key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_pem = cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("write CA");
        Pki {
            dir,
            ca_pem,
            ca_params: params,
            ca_key: key,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn issue(&self, file: &str, names: Vec<String>) -> CertFiles {
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::new(self.ca_params.clone(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        CertFiles {
            cert: cert_path,
            key: key_path,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate valid for 127.0.0.1 and localhost.
    pub fn server(&self, file: &str) -> CertFiles {
        self.issue(file, vec!["localhost".into(), "127.0.0.1".into()])
    }

    /// A client certificate.
    pub fn client(&self, file: &str) -> CertFiles {
        self.issue(file, vec!["backend.example".into()])
    }
}
