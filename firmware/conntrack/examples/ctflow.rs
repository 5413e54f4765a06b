//! Drives the conntrack API by hand (run inside a network namespace):
//! `ctflow create CALLER RELAY_A RELAY_B CALLEE MARK TIMEOUT`,
//! `ctflow get SRC DST`, `ctflow delete SRC DST`, `ctflow dump MARK`,
//! `ctflow events`.

use relaybox_conntrack::{Conntrack, DestroyEvents, FlowSpec, FlowTable, Tuple};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    match a(0).as_str() {
        "create" => Conntrack::open()?.create(&FlowSpec {
            caller: a(1).parse()?,
            relay_caller_side: a(2).parse()?,
            relay_callee_side: a(3).parse()?,
            callee: a(4).parse()?,
            mark: a(5).parse()?,
            timeout_secs: a(6).parse()?,
        })?,
        "get" => println!("{:?}", Conntrack::open()?.get(&Tuple { src: a(1).parse()?, dst: a(2).parse()? })?),
        "delete" => Conntrack::open()?.delete(&Tuple { src: a(1).parse()?, dst: a(2).parse()? })?,
        "dump" => {
            for e in Conntrack::open()?.dump(a(1).parse()?)? {
                println!("{e:?}");
            }
        }
        "events" => {
            let mut events = DestroyEvents::subscribe()?;
            loop {
                for e in events.recv()? {
                    println!("{e:?}");
                }
            }
        }
        _ => return Err("usage: ctflow create|get|delete|dump|events ...".into()),
    }
    Ok(())
}
