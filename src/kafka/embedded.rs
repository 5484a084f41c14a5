//! The embedded Kafka: librdkafka's in-process mock cluster, for zero-setup
//! runs and fast tests. It speaks the real protocol on a loopback port, so
//! any Kafka client (kcat included) can connect to the printed address, but
//! it is not a durable broker: its data lives as long as the process.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError as ClientError;
use rdkafka::mocking::MockCluster;

/// What went wrong with the embedded cluster, its cause kept.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("starting the mock cluster: {0}")]
    Start(#[source] ClientError),
    #[error("starting the mock cluster's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the mock cluster refused: {0}")]
    Cluster(#[source] ClientError),
    #[error("the embedded cluster has stopped")]
    Stopped,
}

type Reply = mpsc::Sender<Result<(), ClientError>>;

enum Command {
    CreateTopic { name: String, partitions: i32, reply: Reply },
    BrokerUp { id: i32, up: bool, reply: Reply },
    RoundTrip { id: i32, delay: std::time::Duration, reply: Reply },
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
    pub fn start(brokers: i32) -> Result<Self, EmbeddedError> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, ClientError>>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic { name, partitions, reply } => {
                            let _ = reply.send(cluster.create_topic(&name, partitions, 1));
                        }
                        Command::BrokerUp { id, up, reply } => {
                            let done = if up { cluster.broker_up(id) } else { cluster.broker_down(id) };
                            let _ = reply.send(done);
                        }
                        Command::RoundTrip { id, delay, reply } => {
                            let _ = reply.send(cluster.broker_round_trip_time(id, delay));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(EmbeddedError::Thread)?;
        let bootstrap = ready_rx.recv().map_err(|_| EmbeddedError::Stopped)?.map_err(EmbeddedError::Start)?;
        Ok(EmbeddedKafka { bootstrap, commands: tx, thread: Some(thread) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), EmbeddedError> {
        self.ask(|reply| Command::CreateTopic { name: name.to_owned(), partitions, reply })
    }

    fn ask(&self, command: impl FnOnce(Reply) -> Command) -> Result<(), EmbeddedError> {
        let (reply, rx) = mpsc::channel();
        self.commands.send(command(reply)).map_err(|_| EmbeddedError::Stopped)?;
        rx.recv().map_err(|_| EmbeddedError::Stopped)?.map_err(EmbeddedError::Cluster)
    }
}

impl EmbeddedKafka {
    /// Takes broker `id` (1-based) down, closing its connections and
    /// refusing new ones, or brings it back: a broker outage on demand, for
    /// fault tests.
    pub fn set_broker_up(&self, id: i32, up: bool) -> Result<(), EmbeddedError> {
        self.ask(|reply| Command::BrokerUp { id, up, reply })
    }

    /// Delays every answer of broker `id` by `delay`, connections staying
    /// open: a broker that has stopped answering, for fault tests.
    pub fn set_round_trip_time(&self, id: i32, delay: std::time::Duration) -> Result<(), EmbeddedError> {
        self.ask(|reply| Command::RoundTrip { id, delay, reply })
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
