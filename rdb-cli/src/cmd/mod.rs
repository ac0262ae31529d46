//! One module per group of commands; each command is one function that
//! takes the connected client and the output settings.

pub mod cas;
pub mod cluster;
pub mod keys;
pub mod pd;
pub mod range;
