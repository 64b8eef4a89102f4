pub mod bench;
pub mod data;
pub mod export;
pub mod figure;
pub mod measure;
pub mod plot;
pub mod source;
pub mod train;
