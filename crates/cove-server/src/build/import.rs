//! `cove template import`: an image from an OCI layout or a `docker save` archive (uploaded
//! whole) becomes a template's build, with no step to run: its layers, Cove's accounts layer
//! on top, the image's variables.

use std::path::Path;

use cove_image::Platform;

use super::{Builder, Failure, owner, run::FINALIZE_STEP};
use crate::{
    build::{BuildLog, accounts},
    catalog::{BuildRow, Built, TemplateRow},
};

impl Builder {
    /// Imports the image `tag` (or the only one) of `archive` as build `build` of `template`;
    /// returns once the build is ready or failed.
    pub async fn import(
        &self,
        template: &TemplateRow,
        build: &BuildRow,
        archive: &Path,
        tag: Option<&str>,
    ) -> Result<(), Failure> {
        if !self.catalog.trigger_build(&build.id).unwrap_or(false) {
            return Err(Failure::at(FINALIZE_STEP, "the build was started already"));
        }
        let log = BuildLog::open(self.catalog.clone(), &build.id);
        let _ = self
            .catalog
            .set_build_status(&build.id, cove_proto::templates::BuildStatus::Building);
        let result = match self.import_now(build, archive, tag, &log).await {
            Ok(built) => self.share(build, &built, &log).await.map(|()| built),
            Err(failure) => Err(failure),
        };
        match result {
            Ok(built) => {
                if let Err(err) = self.finish_ready(template, build, &built) {
                    let failure =
                        Failure::at(FINALIZE_STEP, format!("cannot record the build: {err}"));
                    self.fail(build, &log, failure.clone());
                    return Err(failure);
                }
                Ok(())
            }
            Err(failure) => {
                self.fail(build, &log, failure.clone());
                Err(failure)
            }
        }
    }

    async fn import_now(
        &self,
        build: &BuildRow,
        archive: &Path,
        tag: Option<&str>,
        log: &BuildLog,
    ) -> Result<Built, Failure> {
        let owner = owner(&build.id);
        log.info(super::image::BASE_STEP, "importing the uploaded image");
        let image = cove_image::import(&self.store, archive, tag, &Platform::host(), &owner)
            .await
            .map_err(|err| {
                Failure::at(
                    super::image::BASE_STEP,
                    format!("cannot import the image: {}", cove_image::error_chain(&err)),
                )
            })?;
        log.info(
            super::image::BASE_STEP,
            format!("imported {} ({} layers)", image.name, image.layers.len()),
        );
        let layers: Vec<cove_image::Digest> = image.layers.iter().rev().cloned().collect();
        let accounts = self
            .accounts_layer(&layers, &owner)
            .await
            .map_err(|e| Failure::at(FINALIZE_STEP, e))?;
        let env = self.image_env(&image.config.env_pairs(), &layers).await;
        Ok(Built {
            layers: layers.iter().map(|d| d.hex().to_owned()).collect(),
            accounts: accounts.hex().to_owned(),
            user: accounts::USER.to_owned(),
            workdir: accounts::USER_HOME.to_owned(),
            env,
            start_cmd: None,
            ready_cmd: None,
            from: image.name,
            shell: self.shell(&layers).await,
        })
    }
}
