//! VM volumes through coronafs' typed client ([`coronafs::CoronafsClient`]): the control plane
//! creates and deletes them (with the service token, for the VM's tenant); workers attach and
//! detach them.

use coronafs::api::{AttachInfo, AttachVolume, CreateVolume, Volume};
use uc_runtime::Secret;
use uc_runtime::client::{ClientError, ClientOptions};

#[derive(Clone)]
pub struct Volumes {
    client: coronafs::CoronafsClient,
}

impl Volumes {
    pub fn new(
        url: &str,
        token: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            client: coronafs::CoronafsClient::new(
                url,
                ClientOptions {
                    token: Some(token),
                    // A volume create may clone an image: it can take a while.
                    timeout: std::time::Duration::from_secs(300),
                    ..options
                },
            )?,
        })
    }

    pub async fn create(&self, req: &CreateVolume, key: &str) -> Result<Volume, ClientError> {
        self.client.create_volume(req, Some(key)).await
    }

    pub async fn get(&self, id: &str) -> Result<Volume, ClientError> {
        self.client.get_volume(id).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.client.delete_volume(id).await
    }

    /// Where `worker` opens the volume: always through the NBD export (`prefer_local` off),
    /// so that a migration's destination reaches the same bytes the same way.
    pub async fn attach(&self, id: &str, worker: &str) -> Result<AttachInfo, ClientError> {
        self.client
            .attach(
                id,
                &AttachVolume {
                    worker: worker.to_owned(),
                    prefer_local: false,
                },
            )
            .await
    }

    pub async fn detach(&self, id: &str, worker: &str) -> Result<(), ClientError> {
        self.client.detach(id, worker).await.map(|_| ())
    }
}
