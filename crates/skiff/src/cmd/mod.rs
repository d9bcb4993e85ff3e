pub mod scheduler;
pub mod server;
pub mod sim;
