//! The AWS path once against a real ELBv2 implementation: `moto_server`
//! (installed by `.ci/run` into its venv). The Kubernetes side stays the fake
//! API server; drainwait discovers the target group from a TargetGroupBinding,
//! signs real requests with the SDK and must see the deregistration.

mod common;

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2 as elbv2;
use common::*;
use elbv2::config::{Credentials, Region};
use elbv2::types::{TargetDescription, TargetTypeEnum};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Moto {
    child: tokio::process::Child,
    url: String,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_moto() -> Moto {
    let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = tokio::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} ({e}): install it with pip install 'moto[server]' (bash .ci/run does)"));
    // Bounded wait for it to listen.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
                port,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not listen on 127.0.0.1:{port} within 20 s");
}

/// moto wants a VPC that exists; ask EC2 (query protocol, unsigned is fine for moto) for its default one.
async fn default_vpc(port: u16) -> String {
    let body = "Action=DescribeVpcs&Version=2016-11-15";
    let req = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIDSIM/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect moto");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    let start = resp.find("<vpcId>").expect("a VPC in moto's answer") + "<vpcId>".len();
    let end = resp[start..].find("</vpcId>").expect("closing tag") + start;
    resp[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_against_real_moto_elbv2() {
    let moto = start_moto().await;
    let vpc = default_vpc(moto.port).await;
    let conf = elbv2::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(Credentials::new(
            "AKIDSIMULATED0000001",
            "sim-secret",
            None,
            None,
            "test",
        ))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    let elb = elbv2::Client::from_conf(conf);
    let tg = elb
        .create_target_group()
        .name("argo")
        .protocol(elbv2::types::ProtocolEnum::Http)
        .port(i32::from(PORT))
        .vpc_id(&vpc)
        .target_type(TargetTypeEnum::Ip)
        .send()
        .await
        .expect("create target group");
    let arn = tg.target_groups()[0]
        .target_group_arn()
        .expect("arn")
        .to_string();
    let target = TargetDescription::builder()
        .id(IP)
        .port(i32::from(PORT))
        .build();
    elb.register_targets()
        .target_group_arn(&arn)
        .targets(target.clone())
        .send()
        .await
        .expect("register");

    let w = World::new().await;
    w.kube.put_target_group_binding(
        NS,
        "argo-server-tgb",
        json!({"targetGroupARN": arn, "targetType": "ip", "serviceRef": {"name": SVC, "port": 80}}),
    );
    let env = [
        (
            "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
            moto.url.as_str(),
        ),
        ("DRAINWAIT_LB", "aws"),
    ];
    let (run, ()) = tokio::join!(w.run(&[], &env), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        w.flip_endpoint();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        elb.deregister_targets()
            .target_group_arn(&arn)
            .targets(target)
            .send()
            .await
            .expect("deregister");
    });
    run.assert_code(0);
    // Deregistered at ~2 s, then LB settle 0.3 s: not before.
    assert!(
        run.elapsed >= Duration::from_millis(2200),
        "{:?}\n{}",
        run.elapsed,
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
    run.assert_logged(&["aws passed"]);
    assert!(
        run.stderr.contains("Target.NotRegistered"),
        "moto reports a deregistered target as unused/NotRegistered: {}",
        run.stderr
    );
}
