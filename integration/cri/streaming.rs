//! The CRI's streaming calls end to end: Exec, Attach and PortForward URLs
//! from a real toted, used over WebSocket and SPDY/3.1 as `kubectl`
//! (through the kubelet) does, into real busybox containers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tote_cri::api::*;
use tote_stream::spdy::client as spdy;

use crate::pods::{
    Runtime, assert_nothing_left, container_config, create, pod_config, remove_pod, run_pod, start, status,
};
use crate::support::Toted;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to a streaming URL over WebSocket with `protocol`.
async fn connect(url: &str, protocol: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
        .await
        .expect("the streaming server answers")
        .map(|(socket, _)| socket)
}

/// What a remote-command session gave, by channel, until the server
/// closed it.
#[derive(Debug, Default)]
struct Session {
    stdout: String,
    stderr: String,
    error: String,
}

async fn read_session(socket: &mut Socket) -> Session {
    let mut session = Session::default();
    let read = async {
        while let Some(message) = socket.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            let text = String::from_utf8_lossy(payload);
            match channel {
                1 => session.stdout.push_str(&text),
                2 => session.stderr.push_str(&text),
                3 => session.error.push_str(&text),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the session ends");
    session
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = vec![channel];
    data.extend_from_slice(payload);
    Message::Binary(data.into())
}

async fn exec_url(rt: &mut Runtime, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
    let request = ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    };
    rt.exec(request).await.unwrap().into_inner().url
}

/// Exec over v5 and v4 (output on its channels, the exit as a Status),
/// stdin closed by v5's close signal, a terminal resized; attach to a
/// container's output; port-forward to a server on the pod's loopback;
/// a used URL refused; a client gone mid-exec takes its process along;
/// nothing left after the pod goes.
#[tokio::test(flavor = "multi_thread")]
async fn exec_attach_and_port_forward_over_websocket() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("streams", &toted.dir.join("logs/streams"));
    let pod = run_pod(&mut rt, &config).await;
    let script = "nc -ll -p 8080 -e cat & i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done";
    let c = create(&mut rt, &pod, &config, container_config("c", script)).await;
    start(&mut rt, &c).await;

    // Output, error output and a non-zero exit, v5 and v4.
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let url = exec_url(&mut rt, &c, &["sh", "-c", "echo out; echo err >&2; exit 3"], false, false).await;
        let mut socket = connect(&url, protocol).await.unwrap();
        let session = read_session(&mut socket).await;
        assert_eq!((session.stdout.as_str(), session.stderr.as_str()), ("out\n", "err\n"), "{protocol}");
        let ended: serde_json::Value = serde_json::from_str(&session.error).unwrap();
        assert_eq!(ended["status"], "Failure", "{protocol}: {ended}");
        assert_eq!(ended["reason"], "NonZeroExitCode", "{protocol}: {ended}");
        assert_eq!(ended["details"]["causes"][0]["message"], "3", "{protocol}: {ended}");
        // A URL is good for one session only.
        let again = connect(&url, protocol).await;
        assert!(again.is_err(), "a used URL was served again");
    }
    let url = exec_url(&mut rt, &c, &["true"], false, false).await;
    let mut socket = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let done: serde_json::Value = serde_json::from_str(&read_session(&mut socket).await.error).unwrap();
    assert_eq!(done["status"], "Success", "{done}");

    // Input, ended by v5's close signal for stdin.
    let url = exec_url(&mut rt, &c, &["sh", "-c", "cat; echo done"], false, true).await;
    let mut socket = connect(&url, "v5.channel.k8s.io").await.unwrap();
    socket.send(frame(0, b"hello\n")).await.unwrap();
    socket.send(frame(255, &[0])).await.unwrap();
    let session = read_session(&mut socket).await;
    assert_eq!(session.stdout, "hello\ndone\n");

    // A terminal, resized by the client.
    let script =
        "for i in $(seq 100); do s=$(stty size); [ \"$s\" = \"31 101\" ] && break; sleep 0.05; done; echo \"size $s\"";
    let url = exec_url(&mut rt, &c, &["sh", "-c", script], true, true).await;
    let mut socket = connect(&url, "v5.channel.k8s.io").await.unwrap();
    socket.send(frame(4, br#"{"Width":101,"Height":31}"#)).await.unwrap();
    let session = read_session(&mut socket).await;
    assert!(session.stdout.contains("size 31 101"), "{session:?}");

    // Attach: the container's own output.
    let request = AttachRequest { container_id: c.clone(), stdin: false, tty: false, stdout: true, stderr: true };
    let url = rt.attach(request).await.unwrap().into_inner().url;
    let mut socket = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let mut seen = String::new();
    while !seen.contains("tick") {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("attach output") {
            Some(Ok(Message::Binary(data))) if data.first() == Some(&1) => {
                seen.push_str(&String::from_utf8_lossy(&data[1..]))
            }
            Some(Ok(_)) => {}
            other => panic!("attach ended: {other:?}"),
        }
    }
    drop(socket);

    // Port-forward (the kubelet's WebSocket protocol: data and error
    // channels per port, each opened by the port number) to an echo server
    // on the pod's 127.0.0.1.
    let request = PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] };
    let url = rt.port_forward(request).await.unwrap().into_inner().url;
    let mut socket = connect(&format!("{url}?port=8080"), "v4.channel.k8s.io").await.unwrap();
    let mut echoed = Vec::new();
    let mut sent = false;
    while echoed != b"ping\n" {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("port-forward data");
        let Some(Ok(Message::Binary(data))) = message else { panic!("port-forward ended: {message:?}") };
        match (data.first(), data.len()) {
            // The opening frames: the port, little-endian, on each channel.
            (Some(0 | 1), 3) if data[1..] == 8080u16.to_le_bytes() && !sent => {
                socket.send(frame(0, b"ping\n")).await.unwrap();
                sent = true;
            }
            (Some(0 | 1), 3) if data[1..] == 8080u16.to_le_bytes() => {}
            (Some(0), _) => echoed.extend_from_slice(&data[1..]),
            (Some(1), _) => panic!("port-forward error: {}", String::from_utf8_lossy(&data[1..])),
            _ => {}
        }
    }
    drop(socket);

    // A client gone mid-exec: its process goes too.
    let url = exec_url(&mut rt, &c, &["sh", "-c", "echo started; exec sleep 4242"], false, false).await;
    let mut socket = connect(&url, "v5.channel.k8s.io").await.unwrap();
    while let Some(Ok(message)) = socket.next().await {
        if matches!(&message, Message::Binary(d) if d.first() == Some(&1)) {
            break;
        }
    }
    let count = "ps -o args | grep -c '^sleep 4242'";
    let running = async {
        loop {
            let out = crate::pods::exec(&mut rt, &c, count, 10).await.unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("the exec's process runs");
    drop(socket);
    let gone = async {
        loop {
            let out = crate::pods::exec(&mut rt, &c, count, 10).await.unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the exec's process ends with its client");

    assert_eq!(status(&mut rt, &c).await.state, ContainerState::ContainerRunning as i32);
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// The remote-command protocols client-go offers over SPDY, newest first.
const SPDY_REMOTE_COMMAND: [&str; 4] =
    ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// Reads a SPDY stream until `want` has come (not to its end).
async fn read_until(stream: &mut spdy::Stream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.read()).await.expect("data in time");
        match chunk.unwrap() {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => panic!("stream ended after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

/// Exec over SPDY as `kubectl exec` speaks it through the kubelet (v4:
/// output on its streams, a non-zero exit as a Status on the error
/// stream), stdin echoed back and half-closed; port-forward over SPDY with
/// two connections to the pod's echo server at once; nothing left after.
#[tokio::test(flavor = "multi_thread")]
async fn exec_and_port_forward_over_spdy() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("spdy", &toted.dir.join("logs/spdy"));
    let pod = run_pod(&mut rt, &config).await;
    let c = create(&mut rt, &pod, &config, container_config("c", "exec nc -ll -p 8080 -e cat")).await;
    start(&mut rt, &c).await;

    // Output by stream and the exit code in the v4 Status.
    let url = exec_url(&mut rt, &c, &["sh", "-c", "echo out; echo err >&2; exit 3"], false, false).await;
    let conn = spdy::connect(&url, &SPDY_REMOTE_COMMAND).await.unwrap();
    assert_eq!(conn.protocol(), "v4.channel.k8s.io");
    // client-go's order: error first.
    let mut error = conn.open(&[("streamtype", "error")]).await.unwrap();
    let mut stdout = conn.open(&[("streamtype", "stdout")]).await.unwrap();
    let mut stderr = conn.open(&[("streamtype", "stderr")]).await.unwrap();
    let session = async { (stdout.read_to_end().await, stderr.read_to_end().await, error.read_to_end().await) };
    let (out, err, ended) =
        tokio::time::timeout(Duration::from_secs(30), session).await.expect("the exec ends within 30 s");
    assert_eq!((out.unwrap(), err.unwrap()), (b"out\n".to_vec(), b"err\n".to_vec()));
    let ended: serde_json::Value = serde_json::from_slice(&ended.unwrap()).unwrap();
    assert_eq!(ended["status"], "Failure", "{ended}");
    assert_eq!(ended["reason"], "NonZeroExitCode", "{ended}");
    assert_eq!(ended["details"]["causes"][0]["reason"], "ExitCode", "{ended}");
    assert_eq!(ended["details"]["causes"][0]["message"], "3", "{ended}");
    conn.close().await;
    // A URL is good for one session only.
    let again = spdy::connect(&url, &SPDY_REMOTE_COMMAND).await;
    assert!(matches!(again, Err(spdy::Error::Refused { status: 404, .. })), "{:?}", again.err());

    // Input, half-closed by the client: `cat` sees EOF and exits 0.
    let url = exec_url(&mut rt, &c, &["cat"], false, true).await;
    let conn = spdy::connect(&url, &SPDY_REMOTE_COMMAND).await.unwrap();
    let mut error = conn.open(&[("streamtype", "error")]).await.unwrap();
    let mut stdin = conn.open(&[("streamtype", "stdin")]).await.unwrap();
    let mut stdout = conn.open(&[("streamtype", "stdout")]).await.unwrap();
    let mut stderr = conn.open(&[("streamtype", "stderr")]).await.unwrap();
    stdin.write(&b"hello over spdy\n"[..]).await.unwrap();
    assert_eq!(read_until(&mut stdout, b"\n").await, b"hello over spdy\n");
    stdin.write(&b"and again"[..]).await.unwrap();
    stdin.finish().unwrap();
    let session = async { (stdout.read_to_end().await, stderr.read_to_end().await, error.read_to_end().await) };
    let (out, err, ended) = tokio::time::timeout(Duration::from_secs(30), session).await.expect("cat ends within 30 s");
    assert_eq!((out.unwrap(), err.unwrap()), (b"and again".to_vec(), Vec::new()));
    let ended: serde_json::Value = serde_json::from_slice(&ended.unwrap()).unwrap();
    assert_eq!(ended["status"], "Success", "{ended}");
    conn.close().await;

    // Port-forward, once the echo server listens (port 8080 is 1F90 in
    // /proc/net/tcp*, state 0A is LISTEN; busybox nc listens on IPv6 too).
    let listening = async {
        let script = "grep -q ':1F90 [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6";
        loop {
            let out = crate::pods::exec(&mut rt, &c, script, 10).await.unwrap();
            if out.exit_code == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listening).await.expect("the echo server listens");
    let request = PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] };
    let url = rt.port_forward(request).await.unwrap().into_inner().url;
    let conn = spdy::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    let mut pairs = Vec::new();
    // client-go's pairs: error then data, one request id each; it closes
    // its side of the error stream at once.
    for request_id in ["0", "1"] {
        let headers = |kind| [("streamtype", kind), ("port", "8080"), ("requestid", request_id)];
        let mut error = conn.open(&headers("error")).await.unwrap();
        error.finish().unwrap();
        let data = conn.open(&headers("data")).await.unwrap();
        pairs.push((error, data));
    }
    // Both connections open at once, each echoing its own bytes.
    for (i, (_, data)) in pairs.iter_mut().enumerate() {
        data.write(format!("ping {i}\n")).await.unwrap();
    }
    for (i, (_, data)) in pairs.iter_mut().enumerate().rev() {
        assert_eq!(read_until(data, b"\n").await, format!("ping {i}\n").as_bytes());
    }
    for (i, (error, data)) in pairs.iter_mut().enumerate() {
        data.write(format!("last {i}")).await.unwrap();
        data.finish().unwrap();
        // The pod's echo ends when it reads our FIN, and so does the stream.
        let rest = tokio::time::timeout(Duration::from_secs(10), data.read_to_end()).await.expect("the echo ends");
        assert_eq!(rest.unwrap(), format!("last {i}").as_bytes());
        let message = error.read_to_end().await.unwrap();
        assert!(message.is_empty(), "port-forward error: {}", String::from_utf8_lossy(&message));
    }
    conn.close().await;

    assert_eq!(status(&mut rt, &c).await.state, ContainerState::ContainerRunning as i32);
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// Reads an attach session's stdout until it holds `want`.
async fn attached_until(socket: &mut Socket, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) if data.first() == Some(&1) => {
                seen.push_str(&String::from_utf8_lossy(&data[1..]));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
    seen
}

async fn attach_stdin(rt: &mut Runtime, id: &str) -> Socket {
    let request = AttachRequest { container_id: id.into(), stdin: true, tty: false, stdout: true, stderr: true };
    let url = rt.attach(request).await.unwrap().into_inner().url;
    connect(&url, "v5.channel.k8s.io").await.unwrap()
}

/// Attach writing a container's stdin: ending the input detaches and
/// leaves the container's stdin open for the next attach, unless the
/// container is `stdin_once`, whose stdin then closes (as with containerd
/// and docker).
#[tokio::test(flavor = "multi_thread")]
async fn attached_input_closes_the_containers_stdin_only_when_stdin_once() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("attach-in", &toted.dir.join("logs/attach-in"));
    let pod = run_pod(&mut rt, &config).await;
    let script = "while read l; do echo got:$l; done; echo eof; sleep 600";
    let mut ids = Vec::new();
    for once in [false, true] {
        let mut container = container_config(if once { "once" } else { "many" }, script);
        container.stdin = true;
        container.stdin_once = once;
        let id = create(&mut rt, &pod, &config, container).await;
        start(&mut rt, &id).await;
        ids.push(id);
    }
    let (many, once) = (&ids[0], &ids[1]);

    let mut first = attach_stdin(&mut rt, many).await;
    first.send(frame(0, b"a\n")).await.unwrap();
    attached_until(&mut first, "got:a").await;
    first.send(frame(255, &[0])).await.unwrap();
    drop(first);
    let mut second = attach_stdin(&mut rt, many).await;
    second.send(frame(0, b"b\n")).await.unwrap();
    let seen = attached_until(&mut second, "got:b").await;
    assert!(!seen.contains("eof"), "the container's stdin was closed by the first attach: {seen}");
    drop(second);

    let mut only = attach_stdin(&mut rt, once).await;
    only.send(frame(0, b"c\n")).await.unwrap();
    attached_until(&mut only, "got:c").await;
    only.send(frame(255, &[0])).await.unwrap();
    attached_until(&mut only, "eof").await;
    drop(only);

    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}
