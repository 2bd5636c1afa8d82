//! Fuzzes the ONNX importer: any byte string must give a `Graph` or an `ImportError`,
//! never a panic, a hang or an allocation the input merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = cnnpack::import::parse_onnx(data) {
        // An imported graph has passed validation; validating it again must agree.
        g.validate().expect("an imported graph validates");
    }
});
