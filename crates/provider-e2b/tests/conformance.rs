//! The provider conformance suite from crabbox-core, against the in-process E2B emulator.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2b_provider_passes_the_conformance_suite() {
    let Some(emu) = common::emulator().await else {
        return;
    };
    let world = common::World::new();
    let provider = world.provider(&emu, &[]).expect("provider");
    let caps = provider.provider().capabilities();
    assert!(
        caps.remote_kill && caps.warm_reuse && !caps.machine_class,
        "{caps:?}"
    );
    crabbox_core::conformance::run_all(&provider).await;
    assert!(
        common::raw_list(&emu).await.is_empty(),
        "the suite must leave no sandbox behind"
    );
    emu.shutdown().await;
}
