package io.fraudray.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.ArrayList;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/** What apicurio-common-app-components-config-index-deployment (not on Maven Central) would
 * generate at build time: the list of dynamic config properties (none: fixed configuration). */
@ApplicationScoped
public class ConfigIndexBeans {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(new ArrayList<>());
    }
}
