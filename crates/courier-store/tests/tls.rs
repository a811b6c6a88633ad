//! TLS to PostgreSQL against a real server: a throwaway cluster with `ssl = on` that accepts TCP only
//! over TLS (`hostssl` lines only), its CA and certificate made here, checked with every `sslmode`.
//!
//! The shared cluster on :54329 must not be reconfigured, so this test runs its own with Debian's
//! `initdb` and `pg_ctl` (the package `scripts/postgres.sh` installs) on a free port, in `target/`
//! (or the temporary folder when the postgres user cannot enter the checkout), and stops and removes it
//! when done, even when an assertion fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use courier_store::{Migrator, SslMode, Store, StoreConfig, StoreError};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

#[tokio::test]
async fn every_sslmode_against_a_server_that_accepts_only_tls() {
    let cluster = TlsCluster::start();
    let url = |host: &str, query: &str| {
        let url = format!("postgres://courier@{host}:{}/postgres", cluster.port);
        if query.is_empty() {
            url
        } else {
            format!("{url}?{query}")
        }
    };
    let ca = cluster.dir.join("ca.pem");
    let other_ca = cluster.dir.join("other-ca.pem");
    let (ca, other_ca) = (ca.display(), other_ca.display());

    // require: encrypted, the certificate not checked (it was signed by a CA nobody told courier of).
    let store = connect(&url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap_or_else(|e| panic!("require must connect: {e}"));
    let security = store.describe_security().await.expect("describe");
    assert!(
        security.starts_with("encrypted with TLS") && security.contains("not verified"),
        "{security}"
    );

    // verify-full with the CA that signed the certificate, by name and by address (both in it), and
    // the migration runner through the same connector.
    for host in ["localhost", "127.0.0.1"] {
        let store = connect(&url(host, &format!("sslmode=verify-full&sslrootcert={ca}")))
            .await
            .unwrap_or_else(|e| {
                panic!("verify-full to {host} with the right CA must connect: {e}")
            });
        let security = store.describe_security().await.expect("describe");
        assert!(
            security.contains("certificate and host name verified against the CA file"),
            "{security}"
        );
    }
    let mut config = StoreConfig::new(url("127.0.0.1", ""));
    config.ssl_mode = Some(SslMode::VerifyFull);
    config.ssl_root_cert = Some(cluster.dir.join("ca.pem"));
    let report = Migrator::embedded()
        .run(&config)
        .await
        .unwrap_or_else(|e| panic!("migrate over verify-full (config keys): {e}"));
    assert!(!report.applied.is_empty());
    Migrator::embedded()
        .check(&config)
        .await
        .unwrap_or_else(|e| panic!("schema check over verify-full: {e}"));

    // verify-full with another CA: refused, saying the certificate is not trusted and by whom.
    let error = connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await
    .expect_err("a certificate from another CA must be refused");
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::Tls { .. })
            && message.contains("certificate is not trusted")
            && message.contains("other-ca.pem")
            && message.contains("sslrootcert"),
        "{message}"
    );
    // libpq's rule: require with a CA file verifies the chain too.
    let error = connect(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other_ca}"),
    ))
    .await
    .expect_err("require with a CA file verifies the chain");
    assert!(
        error.to_string().contains("certificate is not trusted"),
        "{error}"
    );

    // The right CA, but the certificate does not name the host: verify-full refuses, verify-ca accepts.
    // (hostaddr reaches the server while TLS checks the host name.)
    let elsewhere = |mode: &str| {
        url(
            "db.elsewhere.example",
            &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}"),
        )
    };
    let error = connect(&elsewhere("verify-full"))
        .await
        .expect_err("a certificate for another host must be refused by verify-full");
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::Tls { .. })
            && message.contains("does not name the host")
            && message.contains("subjectAltName"),
        "{message}"
    );
    connect(&elsewhere("verify-ca"))
        .await
        .unwrap_or_else(|e| panic!("verify-ca checks the chain, not the name: {e}"));

    // disable: the server accepts this client only over TLS; the error says to turn it on.
    let error = connect(&url("127.0.0.1", "sslmode=disable"))
        .await
        .expect_err("hostssl only: plaintext is refused");
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::Tls { .. })
            && message.contains("refused an unencrypted connection")
            && message.contains("sslmode=verify-full"),
        "{message}"
    );

    // prefer (the default): TLS, since the server offers it.
    let store = connect(&url("127.0.0.1", ""))
        .await
        .unwrap_or_else(|e| panic!("prefer must connect: {e}"));
    assert_eq!(store.ssl_mode(), SslMode::Prefer);
    let security = store.describe_security().await.expect("describe");
    assert!(security.starts_with("encrypted with TLS"), "{security}");
}

async fn connect(url: &str) -> Result<Store, StoreError> {
    Store::connect(&StoreConfig {
        pool_size: 1,
        ..StoreConfig::new(url)
    })
    .await
}

/// A PostgreSQL cluster of its own, TLS only over TCP, stopped and removed on drop.
struct TlsCluster {
    dir: PathBuf,
    port: u16,
}

impl TlsCluster {
    fn start() -> Self {
        let name = format!("courier-pg-tls-{}", std::process::id());
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        let mut dir = target.join(&name);
        // As root the cluster runs as the postgres user, who may not be allowed into the checkout (a
        // clone under /root): then it lives in the temporary folder instead.
        if as_root() && !postgres_can_enter(&target) {
            dir = std::env::temp_dir().join(&name);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster's folder");
        let dir = dir.canonicalize().expect("canonical path");

        let (ca, ca_key) = certificate("courier test CA", None, true);
        let (server, server_key) = certificate("localhost", Some((&ca, &ca_key)), false);
        let (other_ca, _) = certificate("some other CA", None, true);
        write(&dir.join("ca.pem"), &ca.to_pem().expect("pem"));
        write(&dir.join("other-ca.pem"), &other_ca.to_pem().expect("pem"));
        write(&dir.join("server.crt"), &server.to_pem().expect("pem"));
        let key = dir.join("server.key");
        write(&key, &server_key.private_key_to_pem_pkcs8().expect("pem"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");

        let bin = postgres_bin();
        let data = dir.join("data");
        let cluster = Self {
            dir: dir.clone(),
            port: free_port(),
        };
        // PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the postgres user.
        if as_root() {
            let owner = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user exists (Debian's postgresql package makes it)")
            };
            let (uid, gid) = (owner("-u"), owner("-g"));
            for entry in ["", "ca.pem", "other-ca.pem", "server.crt", "server.key"] {
                std::os::unix::fs::chown(dir.join(entry), Some(uid), Some(gid)).expect("chown");
            }
        }
        run(
            &bin.join("initdb"),
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "courier",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        write(
            &data.join("pg_hba.conf"),
            b"local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        );
        let options = format!(
            // The socket in the temporary folder: a deep checkout's path would pass the socket path limit.
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c ssl=on \
             -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off -c shared_buffers=16MB -c max_connections=20",
            cluster.port,
            std::env::temp_dir().display(),
            dir.join("server.crt").display(),
            key.display(),
        );
        run(
            &bin.join("pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &dir.join("postgres.log").display().to_string(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        cluster
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let pg_ctl = postgres_bin().join("pg_ctl");
        let _ = as_postgres(&pg_ctl)
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's binaries, as `scripts/postgres.sh` picks the version.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/postgres.sh start (installs PostgreSQL)",
                root.display()
            )
        })
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL server under /usr/lib/postgresql");
    root.join(newest.to_string()).join("bin")
}

fn postgres_can_enter(dir: &Path) -> bool {
    std::fs::create_dir_all(dir).is_ok()
        && Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(dir)
            .status()
            .is_ok_and(|status| status.success())
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn as_postgres(program: &Path) -> Command {
    if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(program: &Path, args: &[&str]) {
    let out = as_postgres(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A P-256 certificate for `name`, valid for a day: a CA when `ca`, else a server certificate for
/// localhost and 127.0.0.1 signed by `issuer`.
fn certificate(
    name: &str,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> (X509, PKey<Private>) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey");
    let mut subject = X509NameBuilder::new().expect("name");
    subject.append_entry_by_text("CN", name).expect("CN");
    let subject = subject.build();
    let mut builder = X509Builder::new().expect("builder");
    builder.set_version(2).expect("v3");
    let serial = BigNum::from_u32(rand_serial()).and_then(|n| n.to_asn1_integer());
    builder
        .set_serial_number(&serial.expect("serial"))
        .expect("serial");
    builder.set_subject_name(&subject).expect("subject");
    builder
        .set_issuer_name(issuer.map_or(&subject, |(cert, _)| cert.subject_name()))
        .expect("issuer");
    builder.set_pubkey(&key).expect("pubkey");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(1).expect("time"))
        .expect("not after");
    if ca {
        let constraints = BasicConstraints::new().critical().ca().build().expect("bc");
        builder.append_extension(constraints).expect("bc");
        let usage = KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build();
        builder.append_extension(usage.expect("ku")).expect("ku");
    } else {
        let names = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&builder.x509v3_context(issuer.map(|(cert, _)| &**cert), None))
            .expect("san");
        builder.append_extension(names).expect("san");
    }
    let signer = issuer.map_or(&key, |(_, key)| key);
    builder.sign(signer, MessageDigest::sha256()).expect("sign");
    (builder.build(), key)
}

fn rand_serial() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() | 1)
}
