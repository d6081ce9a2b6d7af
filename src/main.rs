fn main() {
    println!("tplbuild");
}
