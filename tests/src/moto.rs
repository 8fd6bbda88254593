//! The S3 and KMS emulator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A moto server (the S3 and KMS emulator) on a free loopback port, killed
/// on drop. Found through `COFFER_MOTO`, which the README's test command
/// sets after installing moto into a virtual environment.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Self {
        let exe = std::env::var("COFFER_MOTO")
            .ok()
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"));
        assert!(
            exe.exists(),
            "moto_server not found at {}: run the tests with tests/run.sh, which installs it",
            exe.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { endpoint: format!("http://127.0.0.1:{port}"), child }
    }

    /// Environment for processes that talk to it (static test credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// SDK configuration for the test's own calls to the emulator.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "coffer-tests");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(creds)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
