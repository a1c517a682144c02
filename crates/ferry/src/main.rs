fn main() { println!("{}", ferry_proto::CLIENT_VERSION); }
