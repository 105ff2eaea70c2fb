//! The validated experiment as the planner reads it (`graph::PlanVariant`): the graph
//! plans variants and their stages through these traits and knows nothing of the schema.

use crate::experiment::{Common, StageSpec, Variant};
use crate::graph::{PlanStage, PlanVariant};

impl PlanVariant for Variant {
    type Stage = StageSpec;
    type Common = Common;

    fn variant_name(&self) -> Option<String> {
        self.name.clone()
    }
    fn stages(&self) -> &[StageSpec] {
        &self.experiment.stages
    }
    fn common(&self) -> &Common {
        &self.experiment.common
    }
    fn seed(&self) -> u64 {
        self.experiment.common.seed
    }
    fn model_device(&self) -> &str {
        &self.experiment.common.model.device
    }
}

impl PlanStage for StageSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        StageSpec::kind(self)
    }
    fn needs(&self) -> &[String] {
        &self.needs
    }
}
