pub mod bench;
pub mod data;
pub mod figure;
pub mod measure;
pub mod plot;
pub mod train;
