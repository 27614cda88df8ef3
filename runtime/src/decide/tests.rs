//! Table tests of the decision core, without a database.
