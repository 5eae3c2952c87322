use asyncloader::{Config, Loader};
fn main() {
    let l = Loader::new(Config {
        n_workers: 1,
        queue_depth: 8,
        max_file_size: 1 << 20,
        ..Config::default()
    })
    .unwrap();
    l.start().unwrap();
    let w = l.worker(0).unwrap();
    for p in [
        "/tmp/al/f1",
        "/tmp/al/f2",
        "/tmp/al/f3",
        "/nonexistent",
        "/tmp",
        "/dev/zero",
        "/proc/self/status",
    ] {
        w.request(p).unwrap();
    }
    for _ in 0..7 {
        let e = w
            .wait_get_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        println!("{:?} len={} err={}", e.path(), e.len(), e.error());
    }
    println!("{:?}", l.stats());
    l.shutdown().unwrap();
    println!("{:?}", l.stats());
}
