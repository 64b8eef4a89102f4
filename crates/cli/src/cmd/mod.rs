pub mod bench;
pub mod data;
pub mod measure;
pub mod train;
