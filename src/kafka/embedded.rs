//! The embedded Kafka: librdkafka's in-process mock cluster, for zero-setup
//! runs and fast tests. It speaks the real protocol on a loopback port, so
//! any Kafka client (kcat included) can connect to the printed address, but
//! it is not a durable broker: its data lives as long as the process.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

enum Command {
    CreateTopic { name: String, partitions: i32, reply: mpsc::Sender<Result<(), String>> },
    BrokerUp { id: i32, up: bool, reply: mpsc::Sender<Result<(), String>> },
    Stop,
}

/// Owns the mock cluster on a thread of its own: the cluster handle is a raw
/// librdkafka pointer that must not move between threads.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka").field("bootstrap", &self.bootstrap).finish()
    }
}

impl EmbeddedKafka {
    pub fn start(brokers: i32) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic { name, partitions, reply } => {
                            let _ = reply.send(cluster.create_topic(&name, partitions, 1).map_err(|e| e.to_string()));
                        }
                        Command::BrokerUp { id, up, reply } => {
                            let done = if up { cluster.broker_up(id) } else { cluster.broker_down(id) };
                            let _ = reply.send(done.map_err(|e| e.to_string()));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx.recv().map_err(|e| e.to_string())??;
        Ok(EmbeddedKafka { bootstrap, commands: tx, thread: Some(thread) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.commands
            .send(Command::CreateTopic { name: name.to_owned(), partitions, reply })
            .map_err(|_| "embedded kafka has stopped".to_owned())?;
        rx.recv().map_err(|_| "embedded kafka has stopped".to_owned())?
    }
}

impl EmbeddedKafka {
    /// Takes broker `id` (1-based) down, closing its connections and
    /// refusing new ones, or brings it back: a broker outage on demand, for
    /// fault tests.
    pub fn set_broker_up(&self, id: i32, up: bool) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.commands.send(Command::BrokerUp { id, up, reply }).map_err(|_| "embedded kafka has stopped".to_owned())?;
        rx.recv().map_err(|_| "embedded kafka has stopped".to_owned())?
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
