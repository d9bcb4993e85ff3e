pub mod agent;
pub mod cleanup;
pub mod controller_manager;
pub mod image;
pub mod join;
pub mod scheduler;
pub mod server;
pub mod sim;
