//! `vproc-runc`: runc with vprocd's views added to every container it creates (see
//! `vproc::runc_wrapper`). Takes runc's command line.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    vproc::runc_wrapper::main(std::env::args_os().collect())
}
